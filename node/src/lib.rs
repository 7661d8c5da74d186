//! The edgemesh node: configuration, the daemon around the data path, the admin API and the
//! operator CLI's client side. The only crate that knows about the process and AWS.

pub mod acme;
pub mod admin;
pub mod aws;
pub mod certs;
pub mod config;
pub mod daemon;
pub mod demo;
pub mod dns;
pub mod drain;
pub mod ecs;
pub mod entrypoint;
pub mod local_ca;
pub mod logging;
pub mod projection;
pub mod route53;
