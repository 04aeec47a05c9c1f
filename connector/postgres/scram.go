package postgres

import (
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"fmt"
	"strconv"
	"sync"
)

// passwordBytes is the entropy of every password: 256 bits.
const passwordBytes = 32

// saltBytes is the SCRAM salt length PostgreSQL itself uses.
const saltBytes = 16

// credential is a password and the SCRAM-SHA-256 verifier that PostgreSQL
// stores for it. The password goes to the grantee once; only the verifier
// goes to the server.
type credential struct {
	password string
	verifier string
}

// newCredential makes a random password and its verifier.
func newCredential(iterations int) (credential, error) {
	var pw [passwordBytes]byte
	if _, err := rand.Read(pw[:]); err != nil {
		return credential{}, fmt.Errorf("postgres: generate password: %w", err)
	}
	var salt [saltBytes]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return credential{}, fmt.Errorf("postgres: generate salt: %w", err)
	}
	// base64url without padding: 43 characters of [A-Za-z0-9_-], which
	// SASLprep leaves unchanged, so the client's normalisation of the
	// password cannot disagree with ours, and which needs no escaping in a
	// URL.
	password := base64.RawURLEncoding.EncodeToString(pw[:])
	v, err := scramVerifier(password, salt[:], iterations)
	if err != nil {
		return credential{}, err
	}
	return credential{password: password, verifier: v}, nil
}

// scramVerifier returns the SCRAM-SHA-256 secret in the form PostgreSQL
// stores in pg_authid.rolpassword and accepts in CREATE ROLE … PASSWORD:
//
//	SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>
//
// with standard base64 and, per RFC 5802 §3 and RFC 7677:
//
//	SaltedPassword = PBKDF2-HMAC-SHA-256(password, salt, iterations, 32)
//	ClientKey      = HMAC(SaltedPassword, "Client Key")
//	StoredKey      = SHA-256(ClientKey)
//	ServerKey      = HMAC(SaltedPassword, "Server Key")
//
// The password must already be in SASLprep form (ours are ASCII).
func scramVerifier(password string, salt []byte, iterations int) (string, error) {
	salted, err := pbkdf2.Key(sha256.New, password, salt, iterations, sha256.Size)
	if err != nil {
		return "", fmt.Errorf("postgres: derive scram key: %w", err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	serverKey := hmacSHA256(salted, "Server Key")
	b64 := base64.StdEncoding.EncodeToString
	return "SCRAM-SHA-256$" + strconv.Itoa(iterations) + ":" + b64(salt) + "$" + b64(storedKey[:]) + ":" + b64(serverKey), nil
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// preparer keeps credentials ready so that Grant spends no time on
// randomness or hashing. One goroutine fills a buffered channel; Grant takes
// from it, or computes inline when it is empty (a burst larger than the
// buffer). Prepared passwords live only in this process's memory and are
// each handed out once.
type preparer struct {
	iterations int
	ready      chan credential
	stop       chan struct{}
	wg         sync.WaitGroup
}

func newPreparer(iterations, size int) *preparer {
	p := &preparer{iterations: iterations, ready: make(chan credential, size), stop: make(chan struct{})}
	if size > 0 {
		p.wg.Add(1)
		go p.fill()
	}
	return p
}

func (p *preparer) fill() {
	defer p.wg.Done()
	for {
		c, err := newCredential(p.iterations)
		if err != nil {
			// crypto/rand does not fail on supported platforms; if it ever
			// does, Grant computes inline and reports the error itself.
			return
		}
		select {
		case p.ready <- c:
		case <-p.stop:
			return
		}
	}
}

// get returns a credential that has never been handed out.
func (p *preparer) get() (credential, error) {
	select {
	case c := <-p.ready:
		return c, nil
	default:
		return newCredential(p.iterations)
	}
}

// close stops the filler and forgets the prepared passwords.
func (p *preparer) close() {
	close(p.stop)
	p.wg.Wait()
	for {
		select {
		case <-p.ready:
		default:
			return
		}
	}
}
