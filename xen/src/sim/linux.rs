//! The model of Linux's 9pfs frontend, which tests run over simulated rings; it lives in
//! [`crate::frontend::linux`] (it drives real rings too) and is re-exported here.

pub use crate::frontend::linux::LinuxFrontend;
