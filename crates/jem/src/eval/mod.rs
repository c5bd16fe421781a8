//! Evaluations of a trained run, one file per evaluation; [`metrics`] holds the plain-array
//! metrics they share.

pub mod accuracy;
pub mod attack;
pub mod calibration;
pub mod fid;
pub mod metrics;
pub mod ood;
pub mod ood_fused;
pub mod ood_maha;
pub mod ood_select;
pub mod run;
pub mod samples;
pub mod store;
pub mod threshold;
