//! `jsonwebtoken`'s crypto backend on ring, verify-only.
//!
//! jsonwebtoken ≥ 10 leaves its cryptography to a process-wide [`CryptoProvider`]; its two
//! built-in ones are `aws_lc_rs` (banned in this tree: ring is the one crypto provider) and
//! `rust_crypto` (pulls the `rsa` crate). This one does what the gateway needs, signature
//! verification of public-key algorithms, with ring, which rustls and tonic already use.
//!
//! It refuses, whatever the caller asks: signing (the gateway never issues JWTs) and every HMAC
//! algorithm (a JWKS public key used as an HMAC secret is the classic key-confusion attack).

use jsonwebtoken::crypto::{CryptoProvider, JwtSigner, JwtVerifier, KeyUtils};
use jsonwebtoken::errors::{ErrorKind, Result as JwtResult, new_error};
use jsonwebtoken::jwk::ThumbprintHash;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey, DecodingKeyKind, EncodingKey};
use ring::signature as ring_sig;

/// The provider [`install`] makes the process default.
static RING_VERIFY_ONLY: CryptoProvider = CryptoProvider {
    signer_factory: refuse_to_sign,
    verifier_factory: new_verifier,
    key_utils: KeyUtils {
        rsa_pub_components_from_private_key: |_| Err(new_error(ErrorKind::InvalidKeyFormat)),
        rsa_pub_components_from_public_key: |_| Err(new_error(ErrorKind::InvalidKeyFormat)),
        ec_pub_components_from_private_key: |_, _| Err(new_error(ErrorKind::InvalidKeyFormat)),
        ed_pub_components_from_private_key: |_, _| Err(new_error(ErrorKind::InvalidKeyFormat)),
        compute_digest,
    },
};

/// Makes the ring backend jsonwebtoken's process default, unless one is installed already
/// (ours, by an earlier verifier, or the application's own choice, which stands).
pub(super) fn install() {
    let _ = RING_VERIFY_ONLY.install_default();
}

fn refuse_to_sign(_: &Algorithm, _: &EncodingKey) -> JwtResult<Box<dyn JwtSigner>> {
    Err(new_error(ErrorKind::Provider("this backend only verifies signatures".to_owned())))
}

fn compute_digest(data: &[u8], hash: ThumbprintHash) -> JwtResult<Vec<u8>> {
    let algorithm = match hash {
        ThumbprintHash::SHA256 => &ring::digest::SHA256,
        ThumbprintHash::SHA384 => &ring::digest::SHA384,
        ThumbprintHash::SHA512 => &ring::digest::SHA512,
        _ => return Err(new_error(ErrorKind::UnsupportedAlgorithm)),
    };
    Ok(ring::digest::digest(algorithm, data).as_ref().to_vec())
}

/// How ring checks one algorithm's signatures.
#[derive(Clone, Copy)]
enum RingAlgorithm {
    Rsa(&'static ring_sig::RsaParameters),
    /// ECDSA and EdDSA: the key is the raw public key (an uncompressed point, or the 32 bytes
    /// of an Ed25519 key), as `DecodingKey::from_ec_components` / `from_ed_components` build it.
    Raw(&'static dyn ring_sig::VerificationAlgorithm),
}

fn ring_algorithm(algorithm: Algorithm) -> Option<(AlgorithmFamily, RingAlgorithm)> {
    use RingAlgorithm::{Raw, Rsa};
    // RSA keys shorter than 2048 bits are refused (ring's `_2048_8192` parameters).
    Some(match algorithm {
        Algorithm::RS256 => (AlgorithmFamily::Rsa, Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA256)),
        Algorithm::RS384 => (AlgorithmFamily::Rsa, Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA384)),
        Algorithm::RS512 => (AlgorithmFamily::Rsa, Rsa(&ring_sig::RSA_PKCS1_2048_8192_SHA512)),
        Algorithm::PS256 => (AlgorithmFamily::Rsa, Rsa(&ring_sig::RSA_PSS_2048_8192_SHA256)),
        Algorithm::PS384 => (AlgorithmFamily::Rsa, Rsa(&ring_sig::RSA_PSS_2048_8192_SHA384)),
        Algorithm::PS512 => (AlgorithmFamily::Rsa, Rsa(&ring_sig::RSA_PSS_2048_8192_SHA512)),
        Algorithm::ES256 => (AlgorithmFamily::Ec, Raw(&ring_sig::ECDSA_P256_SHA256_FIXED)),
        Algorithm::ES384 => (AlgorithmFamily::Ec, Raw(&ring_sig::ECDSA_P384_SHA384_FIXED)),
        Algorithm::EdDSA => (AlgorithmFamily::Ed, Raw(&ring_sig::ED25519)),
        // HMAC (HS256/384/512) and anything added later: never.
        _ => return None,
    })
}

fn new_verifier(algorithm: &Algorithm, key: &DecodingKey) -> JwtResult<Box<dyn JwtVerifier>> {
    let (family, ring) =
        ring_algorithm(*algorithm).ok_or_else(|| new_error(ErrorKind::InvalidAlgorithm))?;
    if key.family() != family {
        return Err(new_error(ErrorKind::InvalidAlgorithm));
    }
    Ok(Box::new(RingVerifier { algorithm: *algorithm, ring, key: key.clone() }))
}

struct RingVerifier {
    algorithm: Algorithm,
    ring: RingAlgorithm,
    key: DecodingKey,
}

impl jsonwebtoken::signature::Verifier<Vec<u8>> for RingVerifier {
    fn verify(
        &self,
        message: &[u8],
        signature: &Vec<u8>,
    ) -> Result<(), jsonwebtoken::signature::Error> {
        let verified = match (self.ring, self.key.kind()) {
            (RingAlgorithm::Rsa(params), DecodingKeyKind::RsaModulusExponent { n, e }) => {
                ring_sig::RsaPublicKeyComponents { n, e }.verify(params, message, signature)
            }
            // A DER `RSAPublicKey` (jsonwebtoken's `from_rsa_der`).
            (RingAlgorithm::Rsa(params), DecodingKeyKind::SecretOrDer(der)) => {
                ring_sig::UnparsedPublicKey::new(params, der).verify(message, signature)
            }
            (RingAlgorithm::Raw(algorithm), DecodingKeyKind::SecretOrDer(raw)) => {
                ring_sig::UnparsedPublicKey::new(algorithm, raw).verify(message, signature)
            }
            (RingAlgorithm::Raw(_), DecodingKeyKind::RsaModulusExponent { .. }) => {
                Err(ring::error::Unspecified)
            }
        };
        verified.map_err(|_| jsonwebtoken::signature::Error::new())
    }
}

impl JwtVerifier for RingVerifier {
    fn algorithm(&self) -> Algorithm {
        self.algorithm
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};

    fn p256() -> (EcdsaKeyPair, DecodingKey) {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let key = DecodingKey::from_ec_der(pair.public_key().as_ref());
        (pair, key)
    }

    #[test]
    fn es256_signatures_verify_and_a_changed_message_does_not() {
        let (pair, key) = p256();
        let signature = pair.sign(&SystemRandom::new(), b"header.claims").unwrap();
        let verifier = new_verifier(&Algorithm::ES256, &key).unwrap();
        assert!(verifier.verify(b"header.claims", &signature.as_ref().to_vec()).is_ok());
        assert!(verifier.verify(b"header.claimz", &signature.as_ref().to_vec()).is_err());
    }

    #[test]
    fn hmac_signing_and_mismatched_families_are_refused() {
        let (_, ec_key) = p256();
        let secret = DecodingKey::from_secret(b"a public key used as a secret").unwrap();
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            assert!(new_verifier(&alg, &secret).is_err(), "{alg:?}");
            assert!(new_verifier(&alg, &ec_key).is_err(), "{alg:?}");
        }
        assert!(new_verifier(&Algorithm::RS256, &ec_key).is_err());
        assert!(new_verifier(&Algorithm::ES256, &secret).is_err());
        let signing_key = EncodingKey::from_secret(b"secret").unwrap();
        assert!(refuse_to_sign(&Algorithm::ES256, &signing_key).is_err());
    }
}
