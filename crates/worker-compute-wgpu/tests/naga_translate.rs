//! Every WGSL kernel, as the backend puts it together, translated by naga to the Metal
//! Shading Language and to HLSL: neither Metal nor DX12 can run here, so this is what is
//! checked of them (Vulkan's SPIR-V runs, on lavapipe, in the other tests). Each module must
//! parse, validate with the capabilities naga's backend for that language supports (plus
//! subgroups for the subgroup variants), and translate without error.

use naga::back::{hlsl, msl};
use naga::valid::{Capabilities, ValidationFlags, Validator};
use worker_compute_wgpu::shaders::Kernel;

fn module(
    src: &str,
    caps: Capabilities,
) -> Result<(naga::Module, naga::valid::ModuleInfo), String> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| e.emit_to_string(src))?;
    Ok((module, info))
}

fn to_msl(src: &str, subgroups: bool) -> Result<String, String> {
    let mut caps = msl::supported_capabilities();
    if subgroups {
        caps |= Capabilities::SUBGROUP;
    }
    let (module, info) = module(src, caps)?;
    let options = msl::Options {
        lang_version: (2, 4),
        ..msl::Options::default()
    };
    let (out, _) = msl::write_string(&module, &info, &options, &msl::PipelineOptions::default())
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn to_hlsl(src: &str, subgroups: bool) -> Result<String, String> {
    let mut caps = hlsl::supported_capabilities();
    if subgroups {
        caps |= Capabilities::SUBGROUP;
    }
    let (module, info) = module(src, caps)?;
    // Shader model 6.0: wave operations (subgroups) need it.
    let options = hlsl::Options {
        shader_model: hlsl::ShaderModel::V6_0,
        ..hlsl::Options::default()
    };
    let pipeline = hlsl::PipelineOptions::default();
    let mut out = String::new();
    hlsl::Writer::new(&mut out, &options, &pipeline)
        .write(&module, &info, None)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

#[test]
fn every_kernel_translates_to_msl_and_hlsl() {
    let mut failures = Vec::new();
    let mut count = 0;
    for kernel in Kernel::all() {
        for subgroups in [false, true] {
            let label = format!("{} (subgroups: {subgroups})", kernel.label());
            let src = kernel
                .source(subgroups)
                .expect("every listed kernel has a source");
            match to_msl(&src, subgroups) {
                Ok(out) if out.contains("kernel void") => count += 1,
                Ok(_) => failures.push(format!("{label}: no kernel in the MSL")),
                Err(e) => failures.push(format!("{label}, MSL:\n{e}")),
            }
            match to_hlsl(&src, subgroups) {
                Ok(out) if out.contains("[numthreads(64, 1, 1)]") => count += 1,
                Ok(_) => failures.push(format!("{label}: no 64-wide kernel in the HLSL")),
                Err(e) => failures.push(format!("{label}, HLSL:\n{e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(count, 4 * Kernel::all().len());
}
