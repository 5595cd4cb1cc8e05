//! Clients of cloud backends: the outbound HTTPS client ([`client`]) and
//! the request signers of each cloud ([`sign`]). Where calls go and how
//! they fall over is [`crate::execute::routes`].

pub mod client;
pub mod sign;
