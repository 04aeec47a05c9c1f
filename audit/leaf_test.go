package audit_test

import (
	"bytes"
	"encoding/hex"
	"encoding/json"
	"testing"
	"time"

	"github.com/transparency-dev/merkle/rfc6962"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
)

// TestLeafGolden pins the leaf encoding byte for byte: docs/audit.md
// describes exactly these bytes, and a change breaks every stored log.
func TestLeafGolden(t *testing.T) {
	ev := &lapse.Event{
		Seq: 7, Time: time.Unix(0, 1700000000123456789).UTC(), Type: "grant.revoked",
		ActorID: "bob", ActorKind: lapse.KindHuman, Channel: "api", RequestID: "rq_1", GrantID: "gr_1",
		Outcome: "verified", Act: []string{"carol"}, RequestHash: "ab12", PolicyVersion: "sha256:cd34",
		Data: json.RawMessage(`{"n":1}`),
	}
	got := hex.EncodeToString(audit.EncodeLeaf(ev))
	want := "02" + "0000000000000007" + "01" + "17979cfe3d85cd15" +
		"0000000d" + hex.EncodeToString([]byte("grant.revoked")) +
		"00000003" + hex.EncodeToString([]byte("bob")) +
		"00000005" + hex.EncodeToString([]byte("human")) +
		"00000003" + hex.EncodeToString([]byte("api")) +
		"00000004" + hex.EncodeToString([]byte("rq_1")) +
		"00000004" + hex.EncodeToString([]byte("gr_1")) +
		"00000008" + hex.EncodeToString([]byte("verified")) +
		"00000009" + hex.EncodeToString([]byte(`["carol"]`)) +
		"00000004" + hex.EncodeToString([]byte("ab12")) +
		"0000000b" + hex.EncodeToString([]byte("sha256:cd34")) +
		"00000007" + hex.EncodeToString([]byte(`{"n":1}`))
	if got != want {
		t.Fatalf("leaf =\n%s\nwant\n%s", got, want)
	}
	back, err := audit.ParseLeaf(audit.EncodeLeaf(ev))
	if err != nil {
		t.Fatal(err)
	}
	a, _ := json.Marshal(ev)
	b, _ := json.Marshal(back)
	if !bytes.Equal(a, b) {
		t.Fatalf("round trip:\n%s\n%s", a, b)
	}
	// An act chain has one encoding: a list in JSON, never an empty one.
	for _, bad := range []string{`[]`, `[ "carol"]`, `"carol"`} {
		leaf := audit.EncodeLeaf(&lapse.Event{Seq: 1, Type: "x", Act: []string{"carol"}})
		leaf = bytes.Replace(leaf, []byte("\x00\x00\x00\x09[\"carol\"]"), append([]byte{0, 0, 0, byte(len(bad))}, bad...), 1)
		if _, err := audit.ParseLeaf(leaf); err == nil {
			t.Errorf("a leaf with act %s parsed", bad)
		}
	}
	// No time is one zero byte, not a zero timestamp.
	bare := audit.EncodeLeaf(&lapse.Event{Seq: 1, Type: "x"})
	if hex.EncodeToString(bare[:10]) != "02000000000000000100" {
		t.Fatalf("bare leaf starts %x", bare[:10])
	}
}

// TestFreeTextCannotForge: text that imitates field boundaries or another
// encoding never produces the leaf of a different event.
func TestFreeTextCannotForge(t *testing.T) {
	a := &lapse.Event{Seq: 1, Type: "grant.created", ActorID: "al", Outcome: "ice"}
	b := &lapse.Event{Seq: 1, Type: "grant.created", ActorID: "alice", Outcome: ""}
	if bytes.Equal(audit.EncodeLeaf(a), audit.EncodeLeaf(b)) {
		t.Fatal("moving text between fields kept the leaf")
	}
	inner := audit.EncodeLeaf(&lapse.Event{Seq: 2, Type: "grant.revoked"})
	c := &lapse.Event{Seq: 1, Type: "grant.created", Outcome: string(inner)}
	leaf := audit.EncodeLeaf(c)
	back, err := audit.ParseLeaf(leaf)
	if err != nil || back.Seq != 1 || back.Outcome != string(inner) {
		t.Fatalf("an embedded encoding was not kept as text: %+v, %v", back, err)
	}
	for i := range leaf {
		if _, err := audit.ParseLeaf(leaf[:i]); err == nil {
			t.Fatalf("a truncated leaf (%d of %d bytes) parsed", i, len(leaf))
		}
	}
	if _, err := audit.ParseLeaf(append(bytes.Clone(leaf), 0)); err == nil {
		t.Fatal("a leaf with a trailing byte parsed")
	}
}

// TestHashesAreRFC6962: the allocation-free hashing matches the reference
// hasher.
func TestHashesAreRFC6962(t *testing.T) {
	leaf := []byte("some leaf")
	if !bytes.Equal(audit.LeafHash(leaf), rfc6962.DefaultHasher.HashLeaf(leaf)) {
		t.Fatal("leaf hash differs from RFC 6962")
	}
}

func TestCheckpointFormat(t *testing.T) {
	skey, vkey, err := audit.GenerateKey("example.com/lapse")
	if err != nil {
		t.Fatal(err)
	}
	s, _ := audit.NewSigner(skey)
	v, _ := audit.NewVerifier(vkey)
	root := bytes.Repeat([]byte{0xab}, 32)
	cp, err := audit.SignCheckpoint(s, 42, root)
	if err != nil {
		t.Fatal(err)
	}
	text, _, _ := bytes.Cut(cp.Note, []byte("\n\n"))
	if string(text) != "example.com/lapse\n42\nq6urq6urq6urq6urq6urq6urq6urq6urq6urq6urq6s=" {
		t.Fatalf("checkpoint text = %q", text)
	}
	back, err := audit.OpenCheckpoint(cp.Note, v)
	if err != nil || back.Size != 42 || !bytes.Equal(back.Root, root) {
		t.Fatalf("open: %+v, %v", back, err)
	}
	for i := range cp.Note {
		bad := bytes.Clone(cp.Note)
		bad[i] ^= 1
		if _, err := audit.OpenCheckpoint(bad, v); err == nil {
			t.Fatalf("a checkpoint with byte %d changed verified", i)
		}
	}
	if _, err := audit.OpenCheckpoint(append(bytes.Clone(cp.Note), cp.Note[len(text)+2:]...), v); err == nil {
		t.Fatal("a checkpoint with a repeated signature line verified")
	}
	if _, _, err := audit.GenerateKey("bad origin"); err == nil {
		t.Fatal("an origin with a space was accepted")
	}
}

func TestVerifierKeyOf(t *testing.T) {
	skey, vkey, err := audit.GenerateKey("example.com/lapse")
	if err != nil {
		t.Fatal(err)
	}
	got, err := audit.VerifierKeyOf(skey)
	if err != nil || got != vkey {
		t.Fatalf("VerifierKeyOf = %q, %v; want %q", got, err, vkey)
	}
	if _, err := audit.VerifierKeyOf(vkey); err == nil {
		t.Fatal("a public key was taken for a private one")
	}
}
