//! Bytes from the operating system's generator: the instance id of a run, the relay's cookie and admission
//! secrets, the jitter of a tunnel's keepalives. The cores take such bytes as arguments and never draw them.

/// Bytes from the operating system's generator (getrandom).
pub fn random_bytes<const N: usize>() -> [u8; N] {
    use rand::TryRngCore;
    let mut b = [0u8; N];
    rand::rngs::OsRng
        .try_fill_bytes(&mut b)
        .expect("the OS random generator works");
    b
}
