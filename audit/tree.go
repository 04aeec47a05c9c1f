package audit

import (
	"context"
	"crypto/sha256"
	"fmt"

	"github.com/transparency-dev/merkle/compact"
	"github.com/transparency-dev/merkle/proof"
	"github.com/transparency-dev/merkle/rfc6962"
)

// HashSize is the size of every hash in the tree (SHA-256).
const HashSize = sha256.Size

// Hasher is the RFC 6962 hasher of the tree, for proof verification.
var Hasher = rfc6962.DefaultHasher

// LeafHash returns the RFC 6962 leaf hash of a canonical leaf:
// SHA-256(0x00 || leaf).
func LeafHash(leaf []byte) []byte {
	h := hashLeaf(leaf, nil)
	return h[:]
}

// hashLeaf computes SHA-256(0x00 || leaf) using buf as scratch space when it
// is large enough, so the verifier's hot loop does not allocate.
func hashLeaf(leaf []byte, buf []byte) [HashSize]byte {
	buf = append(buf[:0], rfc6962.RFC6962LeafHashPrefix)
	buf = append(buf, leaf...)
	return sha256.Sum256(buf)
}

// hashChildren is RFC 6962's interior node hash, SHA-256(0x01 || l || r),
// without the allocations of the generic hasher: the verifier computes one
// per entry.
func hashChildren(l, r []byte) []byte {
	var b [1 + 2*HashSize]byte
	b[0] = rfc6962.RFC6962NodeHashPrefix
	copy(b[1:], l)
	copy(b[1+HashSize:], r)
	h := sha256.Sum256(b[:])
	return h[:]
}

// rangeFactory builds compact ranges with the RFC 6962 node hash.
var rangeFactory = &compact.RangeFactory{Hash: hashChildren}

// Node is one stored node of the tree: a perfect subtree's root, identified
// by its level (0 for leaves) and its index within the level.
type Node struct {
	Level uint
	Index uint64
	Hash  []byte
}

// NodeReader reads stored node hashes. It returns exactly one hash per ID,
// in order, or an error if any is missing.
type NodeReader interface {
	Nodes(ctx context.Context, ids []compact.NodeID) ([][]byte, error)
}

// loadRange returns the compact range [0, size) from stored nodes: the
// roots of the perfect subtrees that cover it, which is all the state
// needed to append more leaves and compute roots.
func loadRange(ctx context.Context, r NodeReader, size uint64) (*compact.Range, error) {
	ids := compact.RangeNodes(0, size, nil)
	var hashes [][]byte
	if len(ids) > 0 {
		var err error
		if hashes, err = r.Nodes(ctx, ids); err != nil {
			return nil, err
		}
	}
	return rangeFactory.NewRange(0, size, hashes)
}

// rootOf returns the root hash of a compact range starting at 0, with the
// empty tree's root for an empty range.
func rootOf(r *compact.Range) []byte {
	root, err := r.GetRootHash(nil)
	if err != nil || root == nil {
		return Hasher.EmptyRoot()
	}
	return root
}

// inclusionProof returns the RFC 6962 inclusion proof of leaf index in the
// tree of the given size, from stored nodes.
func inclusionProof(ctx context.Context, r NodeReader, index, size uint64) ([][]byte, error) {
	nodes, err := proof.Inclusion(index, size)
	if err != nil {
		return nil, err
	}
	return fetchProof(ctx, r, nodes)
}

// consistencyProof returns the RFC 6962 consistency proof between two tree
// sizes, from stored nodes.
func consistencyProof(ctx context.Context, r NodeReader, size1, size2 uint64) ([][]byte, error) {
	nodes, err := proof.Consistency(size1, size2)
	if err != nil {
		return nil, err
	}
	return fetchProof(ctx, r, nodes)
}

func fetchProof(ctx context.Context, r NodeReader, nodes proof.Nodes) ([][]byte, error) {
	if len(nodes.IDs) == 0 {
		return [][]byte{}, nil
	}
	hashes, err := r.Nodes(ctx, nodes.IDs)
	if err != nil {
		return nil, err
	}
	if len(hashes) != len(nodes.IDs) {
		return nil, fmt.Errorf("audit: %d node hashes for %d nodes", len(hashes), len(nodes.IDs))
	}
	return nodes.Rehash(hashes, hashChildren)
}

// VerifyInclusion checks an inclusion proof of the leaf hash at index in
// a tree of size with the given root.
func VerifyInclusion(index, size uint64, leafHash []byte, p [][]byte, root []byte) error {
	return proof.VerifyInclusion(Hasher, index, size, leafHash, p, root)
}

// VerifyConsistency checks that the tree of size2 with root2 extends the
// tree of size1 with root1.
func VerifyConsistency(size1, size2 uint64, p [][]byte, root1, root2 []byte) error {
	return proof.VerifyConsistency(Hasher, size1, size2, p, root1, root2)
}
