//! `lodestone-admin`: what an operator needs before anything else can start securely.
//!
//! - [`pki`]: a local certificate authority in a folder (`ca.pem`, `ca.key`), certificates for
//!   the services' listeners (`{name}.pem`, `{name}.key`, with the host names and addresses they
//!   answer on) and for devices (identity in a SAN URI `urn:lodestone:device:{id}` and the CN).
//! - Tokens: the binary's `token` commands create, list and revoke the API tokens of a token
//!   file (`lodestone_kit::auth::TokenFile`); a secret is printed once and never stored.
//!
//! - [`Credentials`]: all of it at once in one folder (CA, a certificate for `127.0.0.1`, an
//!   admin and a service token): what `make up` and every test stack run with.

pub mod credentials;
pub mod pki;

pub use credentials::Credentials;
