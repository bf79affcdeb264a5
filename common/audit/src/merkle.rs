//! The Merkle tree of RFC 6962 §2.1 / RFC 9162 §2.1, with SHA-256.
//!
//! - A leaf is hashed as `SHA-256(0x00 || entry)` ([`leaf_hash`]), an inner
//!   node as `SHA-256(0x01 || left || right)` ([`node_hash`]); the two
//!   prefixes keep a leaf from passing for an inner node.
//! - The tree of `n > 1` leaves splits at `k`, the largest power of two
//!   smaller than `n`: its root is `node_hash(root(D[0..k]), root(D[k..n]))`.
//!   One leaf's tree has the leaf hash as root; the empty tree has
//!   `SHA-256("")`.
//! - [`inclusion_proof`] / [`verify_inclusion`]: the audit path of one leaf
//!   (RFC 9162 §2.1.3), and [`consistency_proof`] / [`verify_consistency`]:
//!   that a tree of `old_size` leaves is a prefix of a tree of `new_size`
//!   leaves (RFC 9162 §2.1.4). The verifiers follow the RFC's bit-shifting
//!   algorithms step by step.
//! - [`Frontier`]: the compact range of the whole tree, the O(log n) roots of
//!   its perfect subtrees, so that an append-only log gets each new root in
//!   O(log n) hashes.
//!
//! Proof generation takes the leaf hashes of the whole tree and costs O(n)
//! hashes; verification costs O(log n).

use ring::digest::{Context, SHA256};

use crate::error::ProofError;

/// A SHA-256 hash: a leaf hash, an inner node hash or a root.
pub type Hash = [u8; 32];

/// The root of the empty tree: SHA-256 of the empty string.
pub fn empty_root() -> Hash {
    finish(Context::new(&SHA256))
}

fn finish(ctx: Context) -> Hash {
    let digest = ctx.finish();
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// The hash of a leaf: `SHA-256(0x00 || entry)`.
pub fn leaf_hash(entry: &[u8]) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x00]);
    ctx.update(entry);
    finish(ctx)
}

/// The hash of an inner node: `SHA-256(0x01 || left || right)`.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut ctx = Context::new(&SHA256);
    ctx.update(&[0x01]);
    ctx.update(left);
    ctx.update(right);
    finish(ctx)
}

/// The largest power of two smaller than `n` (`n >= 2`).
fn split_point(n: usize) -> usize {
    debug_assert!(n >= 2);
    1usize << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// The root of the tree whose leaves have the given hashes (the empty tree's
/// root for no leaves).
pub fn root(leaf_hashes: &[Hash]) -> Hash {
    match leaf_hashes.len() {
        0 => empty_root(),
        _ => subtree_root(leaf_hashes),
    }
}

/// Root of a non-empty (sub)tree.
fn subtree_root(leaves: &[Hash]) -> Hash {
    if leaves.len() == 1 {
        return leaves[0];
    }
    let k = split_point(leaves.len());
    node_hash(&subtree_root(&leaves[..k]), &subtree_root(&leaves[k..]))
}

fn to_usize(v: u64) -> Option<usize> {
    usize::try_from(v).ok()
}

/// The audit path of leaf `index` in the tree of `leaf_hashes` (RFC 9162
/// §2.1.3.1): the sibling hashes from the leaf up to the root, leaf side
/// first. Empty for a one-leaf tree.
pub fn inclusion_proof(index: u64, leaf_hashes: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let tree_size = leaf_hashes.len() as u64;
    let i = match to_usize(index) {
        Some(i) if i < leaf_hashes.len() => i,
        _ => return Err(ProofError::IndexOutOfRange { index, tree_size }),
    };
    let mut proof = Vec::new();
    path(i, leaf_hashes, &mut proof);
    Ok(proof)
}

/// PATH(m, D[n]) of RFC 6962 §2.1.1, appended to `out` bottom-up.
fn path(m: usize, leaves: &[Hash], out: &mut Vec<Hash>) {
    if leaves.len() <= 1 {
        return;
    }
    let k = split_point(leaves.len());
    if m < k {
        path(m, &leaves[..k], out);
        out.push(subtree_root(&leaves[k..]));
    } else {
        path(m - k, &leaves[k..], out);
        out.push(subtree_root(&leaves[..k]));
    }
}

/// Checks that `leaf_hash` is leaf `index` of the tree of `tree_size` leaves
/// with root `root`, given the audit path `proof` (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(
    leaf_hash: &Hash,
    index: u64,
    tree_size: u64,
    proof: &[Hash],
    root: &Hash,
) -> Result<(), ProofError> {
    // Step 1.
    if index >= tree_size {
        return Err(ProofError::IndexOutOfRange { index, tree_size });
    }
    // Steps 2 and 3.
    let mut fnode = index;
    let mut snode = tree_size - 1;
    let mut r = *leaf_hash;
    // Step 4.
    for p in proof {
        if snode == 0 {
            return Err(ProofError::Malformed {
                len: proof.len(),
                reason: "more hashes than the tree is high",
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            r = node_hash(p, &r);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    if snode != 0 {
        return Err(ProofError::Malformed {
            len: proof.len(),
            reason: "fewer hashes than the path from the leaf to the root",
        });
    }
    if r != *root {
        return Err(ProofError::RootMismatch {
            computed: r,
            expected: *root,
        });
    }
    Ok(())
}

/// The consistency proof from the tree of the first `old_size` leaves to the
/// tree of all `leaf_hashes` (RFC 9162 §2.1.4.1). Empty when `old_size` is 0
/// or the whole tree.
pub fn consistency_proof(old_size: u64, leaf_hashes: &[Hash]) -> Result<Vec<Hash>, ProofError> {
    let new_size = leaf_hashes.len() as u64;
    let m = match to_usize(old_size) {
        Some(m) if m <= leaf_hashes.len() => m,
        _ => return Err(ProofError::SizeOrder { old_size, new_size }),
    };
    let mut proof = Vec::new();
    if m > 0 && m < leaf_hashes.len() {
        subproof(m, leaf_hashes, true, &mut proof);
    }
    Ok(proof)
}

/// SUBPROOF(m, D[n], b) of RFC 6962 §2.1.2, appended to `out`.
fn subproof(m: usize, leaves: &[Hash], whole_old_tree: bool, out: &mut Vec<Hash>) {
    let n = leaves.len();
    if m == n {
        if !whole_old_tree {
            out.push(subtree_root(leaves));
        }
        return;
    }
    let k = split_point(n);
    if m <= k {
        subproof(m, &leaves[..k], whole_old_tree, out);
        out.push(subtree_root(&leaves[k..]));
    } else {
        subproof(m - k, &leaves[k..], false, out);
        out.push(subtree_root(&leaves[..k]));
    }
}

/// Checks that the tree of `old_size` leaves with root `old_root` is a
/// prefix of the tree of `new_size` leaves with root `new_root`
/// (RFC 9162 §2.1.4.2).
///
/// The RFC's algorithm covers `0 < old_size < new_size`. Beyond it: equal
/// sizes need an empty proof and equal roots; old size 0 needs an empty
/// proof and the empty tree's root as `old_root`.
pub fn verify_consistency(
    old_size: u64,
    new_size: u64,
    old_root: &Hash,
    new_root: &Hash,
    proof: &[Hash],
) -> Result<(), ProofError> {
    if old_size > new_size {
        return Err(ProofError::SizeOrder { old_size, new_size });
    }
    if old_size == new_size || old_size == 0 {
        if !proof.is_empty() {
            return Err(ProofError::Malformed {
                len: proof.len(),
                reason: "a proof from an empty tree or between equal sizes must be empty",
            });
        }
        let (computed, expected) = if old_size == 0 {
            (empty_root(), *old_root)
        } else {
            (*old_root, *new_root)
        };
        if computed != expected {
            return Err(ProofError::RootMismatch { computed, expected });
        }
        return Ok(());
    }
    // Step 1: a proof between different non-zero sizes is never empty.
    // Step 2: when the old tree is a perfect subtree, its root is the first
    // hash of the path (and is not sent).
    let (first, path): (Hash, &[Hash]) = if old_size.is_power_of_two() {
        if proof.is_empty() {
            return Err(ProofError::Malformed {
                len: 0,
                reason: "a proof between different non-zero sizes cannot be empty",
            });
        }
        (*old_root, proof)
    } else {
        match proof.split_first() {
            Some((first, rest)) => (*first, rest),
            None => {
                return Err(ProofError::Malformed {
                    len: 0,
                    reason: "a proof between different non-zero sizes cannot be empty",
                })
            }
        }
    };
    // Step 3.
    let mut fnode = old_size - 1;
    let mut snode = new_size - 1;
    // Step 4.
    while fnode & 1 == 1 {
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 5.
    let mut fr = first;
    let mut sr = first;
    // Step 6.
    for c in path {
        if snode == 0 {
            return Err(ProofError::Malformed {
                len: proof.len(),
                reason: "more hashes than the trees are high",
            });
        }
        if fnode & 1 == 1 || fnode == snode {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if fnode & 1 == 0 {
                while fnode & 1 == 0 && fnode != 0 {
                    fnode >>= 1;
                    snode >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        fnode >>= 1;
        snode >>= 1;
    }
    // Step 7.
    if snode != 0 {
        return Err(ProofError::Malformed {
            len: proof.len(),
            reason: "fewer hashes than the path to the new root",
        });
    }
    if fr != *old_root {
        return Err(ProofError::OldRootMismatch {
            computed: fr,
            expected: *old_root,
        });
    }
    if sr != *new_root {
        return Err(ProofError::RootMismatch {
            computed: sr,
            expected: *new_root,
        });
    }
    Ok(())
}

/// The compact range `[0, size)` of a growing tree: the roots of its perfect
/// subtrees, largest (leftmost) first, one for each set bit of `size`.
///
/// [`push`](Self::push) costs at most `log2(size)` node hashes and
/// [`root`](Self::root) at most as many, so an append-only log gets the root
/// after each round without rehashing its entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// Perfect subtree roots, left to right; subtree `i` has `2^h` leaves
    /// for the `i`-th highest set bit `h` of `size`.
    stack: Vec<Hash>,
}

impl Frontier {
    /// The frontier of the empty tree.
    pub fn new() -> Self {
        Self::default()
    }

    /// The frontier of the tree of `leaf_hashes`.
    pub fn from_leaves<'a>(leaf_hashes: impl IntoIterator<Item = &'a Hash>) -> Self {
        let mut f = Self::new();
        for h in leaf_hashes {
            f.push(*h);
        }
        f
    }

    /// Appends a leaf (its [`leaf_hash`]).
    pub fn push(&mut self, leaf_hash: Hash) {
        let mut h = leaf_hash;
        let mut s = self.size;
        // Each trailing one bit of the old size is a perfect subtree of the
        // same height as the one being carried: merge them.
        while s & 1 == 1 {
            match self.stack.pop() {
                Some(left) => h = node_hash(&left, &h),
                None => break, // cannot happen: one subtree per set bit
            }
            s >>= 1;
        }
        self.stack.push(h);
        self.size += 1;
    }

    /// The number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The root of the tree (the empty tree's root for no leaves).
    pub fn root(&self) -> Hash {
        let mut it = self.stack.iter().rev();
        let Some(last) = it.next() else {
            return empty_root();
        };
        it.fold(*last, |acc, left| node_hash(left, &acc))
    }

    /// The perfect subtree roots, largest first.
    pub fn subtree_roots(&self) -> &[Hash] {
        &self.stack
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hex;

    // Known-answer vectors of the Go transparency-dev/merkle project (the
    // continuation of google/certificate-transparency-go's merkle package):
    // leaf inputs, root hashes and node hashes from `testonly/constants.go`,
    // inclusion and consistency proofs from `testonly/reference_test.go`
    // (TestRefInclusionProof, TestRefConsistencyProof), at
    // https://github.com/transparency-dev/merkle/tree/main/testonly
    const LEAF_INPUTS: [&str; 8] = [
        "",
        "00",
        "10",
        "2021",
        "3031",
        "40414243",
        "5051525354555657",
        "606162636465666768696a6b6c6d6e6f",
    ];
    /// Roots for tree sizes 0..=8.
    const ROOTS: [&str; 9] = [
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ];
    /// Leaf hashes (level 0 of `NodeHashes()`).
    const LEAF_HASHES: [&str; 8] = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
        "0298d122906dcfc10892cb53a73992fc5b9f493ea4c9badb27b791b4127a7fe7",
        "07506a85fd9dd2f120eb694f86011e5bb4662e5c415a62917033d4a9624487e7",
        "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
        "4271a26be0d8a84f0bd54c8c302e7cb3a3b5d1fa6780a40bcce2873477dab658",
        "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
        "46f6ffadd3d06a09ff3c5860d2755c8b9819db7df44251788c7d8e3180de8eb1",
    ];
    /// (index, tree size, audit path).
    const INCLUSION: &[(u64, usize, &[&str])] = &[
        (0, 1, &[]),
        (
            0,
            2,
            &["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7"],
        ),
        (
            1,
            2,
            &["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d"],
        ),
        (
            2,
            3,
            &["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"],
        ),
        (
            1,
            5,
            &[
                "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            0,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            5,
            8,
            &[
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];
    /// (old size, new size, proof).
    const CONSISTENCY: &[(u64, usize, &[&str])] = &[
        (1, 1, &[]),
        (
            1,
            8,
            &[
                "96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4",
            ],
        ),
        (
            2,
            5,
            &[
                "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
                "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            ],
        ),
        (
            6,
            8,
            &[
                "0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
                "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
                "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
            ],
        ),
    ];

    fn h(text: &str) -> Hash {
        hex::decode_array::<32>(text).unwrap()
    }

    fn bytes(text: &str) -> Vec<u8> {
        (0..text.len() / 2)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap())
            .collect()
    }

    fn vector_leaves() -> Vec<Hash> {
        LEAF_INPUTS.iter().map(|t| leaf_hash(&bytes(t))).collect()
    }

    #[test]
    fn leaf_hashes_match_vectors() {
        for (got, want) in vector_leaves().iter().zip(LEAF_HASHES) {
            assert_eq!(hex::encode(got), want);
        }
    }

    #[test]
    fn roots_match_vectors() {
        let leaves = vector_leaves();
        let mut frontier = Frontier::new();
        assert_eq!(hex::encode(&frontier.root()), ROOTS[0]);
        assert_eq!(hex::encode(&root(&[])), ROOTS[0]);
        for size in 1..=8 {
            assert_eq!(
                hex::encode(&root(&leaves[..size])),
                ROOTS[size],
                "size {size}"
            );
            frontier.push(leaves[size - 1]);
            assert_eq!(frontier.size(), size as u64);
            assert_eq!(
                hex::encode(&frontier.root()),
                ROOTS[size],
                "frontier {size}"
            );
        }
        // The compact range of 7 leaves: [0,4), [4,6), [6,7).
        let f7 = Frontier::from_leaves(&leaves[..7]);
        assert_eq!(
            f7.subtree_roots(),
            &[
                h("d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"),
                h("0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a"),
                h(LEAF_HASHES[6]),
            ]
        );
    }

    #[test]
    fn inclusion_proofs_match_vectors() {
        let leaves = vector_leaves();
        for &(index, size, want) in INCLUSION {
            let got = inclusion_proof(index, &leaves[..size]).unwrap();
            let want: Vec<Hash> = want.iter().map(|t| h(t)).collect();
            assert_eq!(got, want, "index {index} size {size}");
            verify_inclusion(
                &leaves[index as usize],
                index,
                size as u64,
                &want,
                &h(ROOTS[size]),
            )
            .unwrap();
        }
    }

    #[test]
    fn consistency_proofs_match_vectors() {
        let leaves = vector_leaves();
        for &(old, new, want) in CONSISTENCY {
            let got = consistency_proof(old, &leaves[..new]).unwrap();
            let want: Vec<Hash> = want.iter().map(|t| h(t)).collect();
            assert_eq!(got, want, "{old} -> {new}");
            verify_consistency(
                old,
                new as u64,
                &h(ROOTS[old as usize]),
                &h(ROOTS[new]),
                &want,
            )
            .unwrap();
        }
    }

    /// Distinct leaves for the exhaustive tests.
    fn leaves(n: usize) -> Vec<Hash> {
        (0..n as u32).map(|i| leaf_hash(&i.to_le_bytes())).collect()
    }

    fn flip(proof: &[Hash], i: usize) -> Vec<Hash> {
        let mut p = proof.to_vec();
        p[i][i % 32] ^= 0x01 << (i % 8);
        p
    }

    #[test]
    fn every_inclusion_proof_up_to_40_leaves_verifies_and_no_altered_one() {
        let all = leaves(40);
        for size in 1..=40usize {
            let tree = &all[..size];
            let r = root(tree);
            assert_eq!(r, Frontier::from_leaves(tree).root());
            let n = size as u64;
            for index in 0..n {
                let leaf = &tree[index as usize];
                let proof = inclusion_proof(index, tree).unwrap();
                verify_inclusion(leaf, index, n, &proof, &r).unwrap();
                for i in 0..proof.len() {
                    assert!(
                        verify_inclusion(leaf, index, n, &flip(&proof, i), &r).is_err(),
                        "size {size} index {index}: hash {i} flipped"
                    );
                }
                // Wrong leaf, wrong index, shorter or longer proof.
                let other = leaf_hash(b"other");
                assert!(verify_inclusion(&other, index, n, &proof, &r).is_err());
                if n > 1 {
                    let wrong = (index + 1) % n;
                    assert!(verify_inclusion(leaf, wrong, n, &proof, &r).is_err());
                }
                // (A claimed size of n + 1 can pass with the same path and
                // root when both trees have the same shape along it: the
                // size is bound to the root by the signed head, not here.)
                if !proof.is_empty() {
                    let short = &proof[..proof.len() - 1];
                    assert!(verify_inclusion(leaf, index, n, short, &r).is_err());
                }
                let mut long = proof.clone();
                long.push(r);
                assert!(verify_inclusion(leaf, index, n, &long, &r).is_err());
            }
            assert_eq!(
                inclusion_proof(n, tree),
                Err(ProofError::IndexOutOfRange {
                    index: n,
                    tree_size: n
                })
            );
            assert!(verify_inclusion(&tree[0], n, n, &[], &r).is_err());
        }
    }

    #[test]
    fn every_consistency_proof_up_to_40_leaves_verifies_and_no_altered_one() {
        let all = leaves(40);
        let roots: Vec<Hash> = (0..=40).map(|n| root(&all[..n])).collect();
        for new in 1..=40usize {
            let tree = &all[..new];
            for old in 0..=new {
                let (o, n) = (old as u64, new as u64);
                let proof = consistency_proof(o, tree).unwrap();
                verify_consistency(o, n, &roots[old], &roots[new], &proof).unwrap();
                for i in 0..proof.len() {
                    assert!(
                        verify_consistency(o, n, &roots[old], &roots[new], &flip(&proof, i))
                            .is_err(),
                        "{old} -> {new}: hash {i} flipped"
                    );
                }
                // Another old root (that of one leaf fewer or more) fails.
                let other_old = if old > 0 { roots[old - 1] } else { roots[1] };
                assert!(verify_consistency(o, n, &other_old, &roots[new], &proof).is_err());
                if old > 0 {
                    let other_new = roots[new - 1];
                    assert!(verify_consistency(o, n, &roots[old], &other_new, &proof).is_err());
                }
                if !proof.is_empty() {
                    let short = &proof[..proof.len() - 1];
                    assert!(verify_consistency(o, n, &roots[old], &roots[new], short).is_err());
                }
                let mut long = proof.clone();
                long.push(roots[new]);
                assert!(verify_consistency(o, n, &roots[old], &roots[new], &long).is_err());
            }
            assert!(consistency_proof(new as u64 + 1, tree).is_err());
            assert!(
                verify_consistency(new as u64 + 1, new as u64, &roots[new], &roots[new], &[])
                    .is_err()
            );
        }
    }
}
