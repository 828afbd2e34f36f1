//! Operator commands of the binary besides `serve`: provider and credential inspection, key
//! rotation and key reports. Each prints no secret.

pub mod ops;
pub mod rotate;
