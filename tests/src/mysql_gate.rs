//! Pieces of `sluice_mysql::gate::Gate` implementations for the MySQL
//! tests, which stand in for the gateway's guard pipeline.
use sluice_mysql::{
    auth::verifier::{Proof, Verifier},
    ErrPacket,
};

/// `Gate::authenticate` against one token's stored verifier.
pub fn authenticate(verifier: &Verifier, proof: &Proof) -> Result<(), ErrPacket> {
    if proof.matches(verifier) {
        Ok(())
    } else {
        Err(ErrPacket::access_denied("bad token"))
    }
}
