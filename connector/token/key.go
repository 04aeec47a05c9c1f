package token

import (
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"

	"github.com/go-jose/go-jose/v4"

	"github.com/lapsehq/lapse"
)

// pemType is the PEM block type of a PKCS#8 private key.
const pemType = "PRIVATE KEY"

// loadKey reads a PEM PKCS#8 Ed25519 private key.
func loadKey(path string, log *slog.Logger) (ed25519.PrivateKey, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "signing_key_file", "cannot read the signing key file %s", path)
	}
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm()&0o077 != 0 {
		// Not fatal: secret mounts are often group-readable by design.
		log.Warn("token signing key file is readable by other users", "path", path, "mode", fi.Mode().Perm().String())
	}
	block, _ := pem.Decode(b)
	if block == nil || block.Type != pemType {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "signing_key_file", "%s is not a PEM %q block", path, pemType)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "signing_key_file", "%s is not a PKCS#8 private key", path)
	}
	ed, ok := k.(ed25519.PrivateKey)
	if !ok {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "signing_key_file", "%s holds a %T, want an Ed25519 key", path, k)
	}
	return ed, nil
}

// loadOrGenerateKey returns the key at path, generating it first if the
// file does not exist. Generation writes a private temporary file and links
// it into place, so a crash never leaves a half-written key and two
// processes starting at once end up with the same key.
func loadOrGenerateKey(path string, log *slog.Logger) (ed25519.PrivateKey, error) {
	if _, err := os.Stat(path); err == nil {
		return loadKey(path, log)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("token: stat signing key: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("token: create key directory: %w", err)
	}
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("token: generate signing key: %w", err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, fmt.Errorf("token: encode signing key: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".signing-key-*")
	if err != nil {
		return nil, fmt.Errorf("token: create signing key file: %w", err)
	}
	defer os.Remove(tmp.Name())
	// CreateTemp makes the file 0600; Chmod makes that explicit against a
	// permissive umask on exotic systems.
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("token: protect signing key file: %w", err)
	}
	if err := pem.Encode(tmp, &pem.Block{Type: pemType, Bytes: der}); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("token: write signing key: %w", err)
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return nil, fmt.Errorf("token: sync signing key: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return nil, fmt.Errorf("token: close signing key file: %w", err)
	}
	if err := os.Link(tmp.Name(), path); err != nil {
		if errors.Is(err, fs.ErrExist) { // another process won the race
			return loadKey(path, log)
		}
		return nil, fmt.Errorf("token: install signing key: %w", err)
	}
	log.Info("generated token signing key", "path", path)
	return priv, nil
}

// keyID is the RFC 7638 JWK thumbprint of the public key, so the kid is
// stable for a key and differs between keys.
func keyID(pub ed25519.PublicKey) (string, error) {
	jwk := jose.JSONWebKey{Key: pub}
	tp, err := jwk.Thumbprint(crypto.SHA256)
	if err != nil {
		return "", fmt.Errorf("token: key thumbprint: %w", err)
	}
	return base64.RawURLEncoding.EncodeToString(tp), nil
}
