//! Every WGSL kernel, as the backend puts it together, translated by naga to the Metal
//! Shading Language: the Metal path cannot run here, so this is what is checked of it. Each
//! module must parse, validate with the capabilities naga's MSL backend supports (plus
//! subgroups for the subgroup variants), and translate without error.

use naga::back::msl;
use naga::valid::{Capabilities, ValidationFlags, Validator};
use worker_compute_wgpu::shaders::Kernel;

fn translate(label: &str, src: &str, subgroups: bool) -> Result<String, String> {
    let module = naga::front::wgsl::parse_str(src).map_err(|e| e.emit_to_string(src))?;
    let mut caps = msl::supported_capabilities();
    if subgroups {
        caps |= Capabilities::SUBGROUP;
    }
    let info = Validator::new(ValidationFlags::all(), caps)
        .validate(&module)
        .map_err(|e| e.emit_to_string(src))?;
    let options = msl::Options {
        lang_version: (2, 4),
        ..msl::Options::default()
    };
    let (msl, _) = msl::write_string(&module, &info, &options, &msl::PipelineOptions::default())
        .map_err(|e| format!("{label}: {e}"))?;
    Ok(msl)
}

#[test]
fn every_kernel_translates_to_msl() {
    let mut failures = Vec::new();
    let mut count = 0;
    for kernel in Kernel::all() {
        for subgroups in [false, true] {
            let label = format!("{} (subgroups: {subgroups})", kernel.label());
            let src = kernel
                .source(subgroups)
                .expect("every listed kernel has a source");
            match translate(&label, &src, subgroups) {
                Ok(msl) => {
                    assert!(msl.contains("kernel void"), "{label}: no kernel in the MSL");
                    count += 1;
                }
                Err(e) => failures.push(format!("{label}:\n{e}")),
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    assert_eq!(count, 2 * Kernel::all().len());
}
