//! Without a driver, opening the backend is a clean `NoDevice` error, not a panic.

use worker_compute_cuda::{loader, CudaBackend, CudaConfig, CudaError};

#[test]
fn no_driver_is_an_error_value() {
    match loader::probe("cuda") {
        Err(_) => match CudaBackend::new(CudaConfig::default()) {
            Err(e @ CudaError::NoDevice(_)) => {
                assert!(e.to_string().starts_with("no CUDA device found: "), "{e}");
            }
            Err(other) => panic!("expected NoDevice, got {other}"),
            Ok(_) => panic!("a backend without a driver"),
        },
        // A machine with a driver: the device may or may not be usable; it must not panic.
        Ok(_) => {
            let _ = CudaBackend::new(CudaConfig::default());
        }
    }
}
