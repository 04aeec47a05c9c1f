package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/mod/sumdb/note"
)

// Checkpoint is a signed tree head in the format transparency logs use
// (C2SP tlog-checkpoint): a signed note whose text is
//
//	<origin>\n
//	<tree size, decimal>\n
//	<root hash, standard base64>\n
//
// followed by a blank line and one Ed25519 signature line per signer
// ("— <key name> <base64(key hash || signature)>"). The origin is the
// signing key's name, so a checkpoint names the log it belongs to.
type Checkpoint struct {
	Origin string
	Size   uint64
	Root   []byte
	// Note is the whole signed note, exactly as published.
	Note []byte
}

// GenerateKey returns a new Ed25519 key pair for the log named origin in
// the note key formats: skey ("PRIVATE+KEY+<origin>+<hash>+<key>") must
// stay secret; vkey ("<origin>+<hash>+<key>") is what verifiers pin.
// origin must be a valid note key name: no spaces and no "+".
func GenerateKey(origin string) (skey, vkey string, err error) {
	if !validOrigin(origin) {
		return "", "", fmt.Errorf("audit: origin %q must be non-empty, without spaces or '+'", origin)
	}
	return note.GenerateKey(rand.Reader, origin)
}

func validOrigin(s string) bool {
	return s != "" && !strings.ContainsAny(s, "+ \t\r\n") && strings.IndexFunc(s, func(r rune) bool { return r < 0x20 || r == 0x7f }) < 0
}

// NewSigner parses a private key made by GenerateKey.
func NewSigner(skey string) (note.Signer, error) {
	s, err := note.NewSigner(strings.TrimSpace(skey))
	if err != nil {
		return nil, errors.New("audit: not a signing key (want PRIVATE+KEY+<origin>+<hash>+<key>)")
	}
	return s, nil
}

// VerifierKeyOf returns the public key of a private key made by
// GenerateKey, so a server needs to keep only the private key.
func VerifierKeyOf(skey string) (string, error) {
	// PRIVATE+KEY+<name>+<hash>+<base64(0x01 || Ed25519 seed)>
	parts := strings.SplitN(strings.TrimSpace(skey), "+", 5)
	if len(parts) != 5 || parts[0] != "PRIVATE" || parts[1] != "KEY" {
		return "", errors.New("audit: not a signing key (want PRIVATE+KEY+<origin>+<hash>+<key>)")
	}
	b, err := base64.StdEncoding.DecodeString(parts[4])
	if err != nil || len(b) != 1+ed25519.SeedSize || b[0] != 1 {
		return "", errors.New("audit: not an Ed25519 signing key")
	}
	pub := ed25519.NewKeyFromSeed(b[1:]).Public().(ed25519.PublicKey)
	return note.NewEd25519VerifierKey(parts[2], pub)
}

// NewVerifier parses a public key made by GenerateKey.
func NewVerifier(vkey string) (note.Verifier, error) {
	v, err := note.NewVerifier(strings.TrimSpace(vkey))
	if err != nil {
		return nil, errors.New("audit: not a verifier key (want <origin>+<hash>+<key>)")
	}
	return v, nil
}

// SignCheckpoint signs the head of the tree of the given size and root.
func SignCheckpoint(s note.Signer, size uint64, root []byte) (*Checkpoint, error) {
	if len(root) != HashSize {
		return nil, fmt.Errorf("audit: root hash has %d bytes", len(root))
	}
	text := fmt.Sprintf("%s\n%d\n%s\n", s.Name(), size, base64.StdEncoding.EncodeToString(root))
	msg, err := note.Sign(&note.Note{Text: text}, s)
	if err != nil {
		return nil, fmt.Errorf("audit: sign checkpoint: %w", err)
	}
	return &Checkpoint{Origin: s.Name(), Size: size, Root: bytes.Clone(root), Note: msg}, nil
}

// OpenCheckpoint verifies a signed checkpoint with v and parses it. The
// origin must be v's key name; extension lines after the root are allowed
// and ignored, as the format says. Only a byte-exact note is accepted: one
// signature by v in canonical form, nothing else.
func OpenCheckpoint(msg []byte, v note.Verifier) (*Checkpoint, error) {
	text, err := openExact(msg, v)
	if err != nil {
		return nil, fmt.Errorf("audit: checkpoint: %w", err)
	}
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 {
		return nil, errors.New("audit: checkpoint: fewer than three lines")
	}
	if lines[0] != v.Name() {
		return nil, fmt.Errorf("audit: checkpoint: origin %q is not the key's %q", lines[0], v.Name())
	}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil || strconv.FormatUint(size, 10) != lines[1] {
		return nil, errors.New("audit: checkpoint: malformed tree size")
	}
	root, err := base64.StdEncoding.Strict().DecodeString(lines[2])
	if err != nil || len(root) != HashSize {
		return nil, errors.New("audit: checkpoint: malformed root hash")
	}
	return &Checkpoint{Origin: lines[0], Size: size, Root: root, Note: bytes.Clone(msg)}, nil
}

// openExact opens a note signed by v and insists that msg is exactly what
// note.Sign would produce for its text: note.Open tolerates repeated
// signature lines, signatures by unknown keys and non-canonical base64, and
// a tamper-evident document must not.
func openExact(msg []byte, v note.Verifier) (string, error) {
	n, err := note.Open(msg, note.VerifierList(v))
	if err != nil {
		return "", err
	}
	if len(n.Sigs) != 1 || len(n.UnverifiedSigs) != 0 {
		return "", errors.New("want exactly one signature")
	}
	sig, err := base64.StdEncoding.DecodeString(n.Sigs[0].Base64)
	if err != nil {
		return "", err
	}
	want := n.Text + "\n— " + v.Name() + " " + base64.StdEncoding.EncodeToString(sig) + "\n"
	if string(msg) != want {
		return "", errors.New("not in canonical form")
	}
	return n.Text, nil
}

// ErrForeignKey is wrapped by the error of Log.CheckKey when the store's
// checkpoints were signed by another key than the log's: two replicas with
// different keys, or a key replaced by mistake.
var ErrForeignKey = errors.New("audit: the stored checkpoints are signed by another key")

// noteSigner returns the key name and key hash of a signed note's first
// signature line, without verifying it, to say which key a checkpoint that
// does not open was signed with.
func noteSigner(msg []byte) (name string, hash uint32, ok bool) {
	i := bytes.LastIndex(msg, []byte("\n\n"))
	if i < 0 {
		return "", 0, false
	}
	line, _, _ := strings.Cut(string(msg[i+2:]), "\n")
	rest, found := strings.CutPrefix(line, "— ")
	if !found {
		return "", 0, false
	}
	name, b64, found := strings.Cut(rest, " ")
	if !found {
		return "", 0, false
	}
	sig, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(sig) < 4 {
		return "", 0, false
	}
	return name, uint32(sig[0])<<24 | uint32(sig[1])<<16 | uint32(sig[2])<<8 | uint32(sig[3]), true
}
