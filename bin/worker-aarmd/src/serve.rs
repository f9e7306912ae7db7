//! `worker-aarmd serve`: [`worker_http::serve_model`] on the wgpu backend: the same routes,
//! events and start-up contract as the other workers, with the adapter in `/health` and the
//! ready callback.

use worker_compute_wgpu::WgpuConfig;
use worker_http::ServeArgs;

use crate::{open_backend, worker_kind};

pub fn serve(config: WgpuConfig, args: &ServeArgs) -> anyhow::Result<()> {
    // The adapter first, before serve_model starts logging: without one, the one line of the
    // error is all that is printed (not also the Vulkan loader's complaints, relayed by wgpu).
    let be = open_backend(config)?;
    let kind = worker_kind(&be);
    worker_http::serve_model(args, kind, move |_, _| Ok(Box::new(be)))?;
    Ok(())
}
