//! Evaluations of a trained run, one file per evaluation.

pub mod accuracy;
pub mod run;
pub mod samples;
