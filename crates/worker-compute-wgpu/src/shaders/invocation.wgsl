// Where an invocation stands in its dispatch, for every kernel: 64 invocations a workgroup,
// and workgroups numbered `wid.x + wid.y * nwg.x`, so that more than 65 535 of them fit in
// one dispatch.

struct Inv {
    @builtin(local_invocation_index) t: u32,
    @builtin(workgroup_id) wid: vec3<u32>,
    @builtin(num_workgroups) nwg: vec3<u32>,
}

// The workgroup's number in the dispatch.
fn group_index(inv: Inv) -> u32 {
    return inv.wid.x + inv.wid.y * inv.nwg.x;
}

// The invocation's number in the dispatch.
fn global_index(inv: Inv) -> u32 {
    return group_index(inv) * 64u + inv.t;
}
