package broker

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
)

// sealer encrypts the secrets the broker must keep for a while — a grant's
// credentials until the grantee claims them, the connector's probe material
// until revocation is verified — with AES-256-GCM. The grant ID and the
// purpose are bound in as additional data, so a sealed blob cannot be moved
// to another grant or reused for another purpose.
type sealer struct {
	aead cipher.AEAD
}

func newSealer(key []byte) (*sealer, error) {
	if len(key) != 32 {
		return nil, fmt.Errorf("sealing key must be 32 bytes, got %d", len(key))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil, err
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil, err
	}
	return &sealer{aead: aead}, nil
}

// seal encodes v as JSON and encrypts it. A nil or empty map seals to nil.
func (s *sealer) seal(grantID, purpose string, v map[string]string) ([]byte, error) {
	if len(v) == 0 {
		return nil, nil
	}
	plain, err := json.Marshal(v)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, s.aead.NonceSize(), s.aead.NonceSize()+len(plain)+s.aead.Overhead())
	if _, err := rand.Read(nonce); err != nil {
		return nil, err
	}
	out := s.aead.Seal(nonce, nonce, plain, []byte(purpose+"\x00"+grantID))
	clear(plain)
	return out, nil
}

// open decrypts what seal produced. nil opens to nil.
func (s *sealer) open(grantID, purpose string, sealed []byte) (map[string]string, error) {
	if len(sealed) == 0 {
		return nil, nil
	}
	n := s.aead.NonceSize()
	if len(sealed) < n {
		return nil, errors.New("sealed data is truncated")
	}
	plain, err := s.aead.Open(nil, sealed[:n], sealed[n:], []byte(purpose+"\x00"+grantID))
	if err != nil {
		return nil, errors.New("sealed data does not open with this key and grant")
	}
	var v map[string]string
	err = json.Unmarshal(plain, &v)
	clear(plain)
	return v, err
}

const (
	purposeCredentials = "credentials"
	purposeProbe       = "probe"
)
