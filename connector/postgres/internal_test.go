package postgres

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

// TestSCRAMVerifierRFC7677 checks the verifier against the SCRAM-SHA-256
// exchange of RFC 7677 §3 (user "user", password "pencil"): a server holding
// only our StoredKey and ServerKey must accept the RFC's client proof and
// produce the RFC's server signature.
func TestSCRAMVerifierRFC7677(t *testing.T) {
	salt, _ := base64.StdEncoding.DecodeString("W22ZaJ0SNY7soEsUEjb6gQ==")
	v, err := scramVerifier("pencil", salt, 4096)
	if err != nil {
		t.Fatal(err)
	}
	head, keys, ok := strings.Cut(strings.TrimPrefix(v, "SCRAM-SHA-256$"), "$")
	if !ok || head != "4096:W22ZaJ0SNY7soEsUEjb6gQ==" {
		t.Fatalf("verifier %q has the wrong form", v)
	}
	sk, svk, _ := strings.Cut(keys, ":")
	storedKey, _ := base64.StdEncoding.DecodeString(sk)
	serverKey, _ := base64.StdEncoding.DecodeString(svk)

	const (
		clientFirstBare = "n=user,r=rOprNGfwEbeRWgbNEkqO"
		serverFirst     = "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
		clientFinalBare = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
		proof           = "dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
		serverSig       = "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
	)
	authMessage := clientFirstBare + "," + serverFirst + "," + clientFinalBare
	p, _ := base64.StdEncoding.DecodeString(proof)
	clientSig := hmacSHA256(storedKey, authMessage)
	clientKey := make([]byte, len(p))
	for i := range p {
		clientKey[i] = p[i] ^ clientSig[i]
	}
	if got := sha256.Sum256(clientKey); !hmac.Equal(got[:], storedKey) {
		t.Error("the RFC's client proof does not verify against our StoredKey")
	}
	if got := base64.StdEncoding.EncodeToString(hmacSHA256(serverKey, authMessage)); got != serverSig {
		t.Errorf("server signature = %s, want %s", got, serverSig)
	}
}

func TestNewCredential(t *testing.T) {
	a, err := newCredential(DefaultSCRAMIterations)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := newCredential(DefaultSCRAMIterations)
	if a.password == b.password || len(a.password) != 43 {
		t.Errorf("passwords are not fresh 256-bit values: %d chars", len(a.password))
	}
	if strings.Contains(a.verifier, a.password) || !strings.HasPrefix(a.verifier, "SCRAM-SHA-256$32:") {
		t.Error("verifier has the wrong form or contains the password")
	}
	if _, err := quoteLiteral(a.verifier); err != nil {
		t.Errorf("a verifier does not pass the literal allow-list: %v", err)
	}
	p := newPreparer(DefaultSCRAMIterations, 4)
	seen := map[string]bool{}
	for range 20 { // more than the buffer: some are computed inline
		c, err := p.get()
		if err != nil {
			t.Fatal(err)
		}
		if seen[c.password] {
			t.Fatal("a prepared password was handed out twice")
		}
		seen[c.password] = true
	}
	p.close()
}

// TestRoleNames checks the names: deterministic, from [a-z0-9_], bounded by
// PostgreSQL's 63 bytes even with the longest prefix and a hashed grant ID,
// mapped back to grant IDs, distinct per grant.
func TestRoleNames(t *testing.T) {
	longPrefix := "p" + strings.Repeat("x", MaxPrefixLength-1)
	cfg := Config{DSN: lapse.SecretRef{Value: "x"}, Prefix: longPrefix}
	if err := cfg.Validate(); err != nil {
		t.Fatalf("longest prefix refused: %v", err)
	}
	cfg.Prefix += "x"
	if lapse.ErrorCode(cfg.Validate()) != lapse.EINVALID {
		t.Fatal("a prefix over the bound was accepted")
	}
	canonical := lapse.NewID(lapse.PrefixGrant, time.Now())
	for _, id := range []string{canonical, "custom.grant-1:" + strings.Repeat("z", 100)} {
		l1, e1, err := roleNames(longPrefix, id)
		if err != nil {
			t.Fatal(err)
		}
		l2, e2, _ := roleNames(longPrefix, id)
		if l1 != l2 || e1 != e2 {
			t.Error("names are not deterministic")
		}
		for _, n := range []string{l1, e1} {
			if len(n) > MaxRoleNameLength {
				t.Errorf("%s is %d bytes, over %d", n, len(n), MaxRoleNameLength)
			}
			if strings.Trim(n, "abcdefghijklmnopqrstuvwxyz0123456789_") != "" {
				t.Errorf("%s has characters outside [a-z0-9_]", n)
			}
		}
		gid, elev, ok := parseRoleName(longPrefix, e1)
		if !ok || !elev {
			t.Errorf("parseRoleName(%s) = %v, %v", e1, elev, ok)
		}
		if id == canonical && gid != id {
			t.Errorf("grant ID from name = %q, want %q", gid, id)
		}
		if id != canonical && gid != "" {
			t.Errorf("a hashed name mapped to grant ID %q", gid)
		}
		if gid, elev, _ := parseRoleName(longPrefix, l1); elev || (id == canonical && gid != id) {
			t.Errorf("login name %s parsed as elevation=%v grant=%q", l1, elev, gid)
		}
	}
	a, _, _ := roleNames("lapse_", lapse.NewID(lapse.PrefixGrant, time.Now()))
	b, _, _ := roleNames("lapse_", lapse.NewID(lapse.PrefixGrant, time.Now()))
	if a == b {
		t.Error("two grants got one name")
	}
	for _, bad := range []string{"", "gr_x'", "gr_x y", "gr_\x00", "gr_é", "gr_%", strings.Repeat("a", 129)} {
		if _, _, err := roleNames("lapse_", bad); lapse.ErrorCode(err) != lapse.EINVALID {
			t.Errorf("grant ID %q: %v, want EINVALID", bad, err)
		}
	}
}

func TestConfigValidate(t *testing.T) {
	ok := Config{DSN: lapse.SecretRef{Value: "postgres://x@h/db"}}
	if err := ok.Validate(); err != nil {
		t.Fatalf("minimal config: %v", err)
	}
	cases := map[string]func(*Config){
		"dsn":              func(c *Config) { c.DSN = lapse.SecretRef{} },
		"prefix":           func(c *Config) { c.Prefix = `lapse"` },
		"prefix upper":     func(c *Config) { c.Prefix = "Lapse_" },
		"owned":            func(c *Config) { c.Owned = "keep" },
		"reassign_to":      func(c *Config) { c.Owned = OwnedReassign },
		"reassign hostile": func(c *Config) { c.Owned, c.ReassignTo = OwnedReassign, `x"; --` },
		"reassign to lapse": func(c *Config) {
			c.Owned, c.ReassignTo = OwnedReassign, "lapse_x"
		},
		"reassign_to without reassign": func(c *Config) { c.ReassignTo = "owner" },
		"iterations":                   func(c *Config) { c.SCRAMIterations = MaxSCRAMIterations + 1 },
		"iterations negative":          func(c *Config) { c.SCRAMIterations = -1 },
		"port":                         func(c *Config) { c.Port = 70000 },
		"host":                         func(c *Config) { c.Host = "h ost" },
		"database":                     func(c *Config) { c.Database = "d\x00b" },
		"databases":                    func(c *Config) { c.Databases = []string{""} },
		"max_conns":                    func(c *Config) { c.MaxConns = -1 },
	}
	for name, mod := range cases {
		c := ok
		mod(&c)
		if lapse.ErrorCode(c.Validate()) != lapse.EINVALID {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestParseSpec(t *testing.T) {
	s, err := parseSpec(map[string]any{"roles": []any{"app_read", "Reports-RO"}, "inherit": false, "connection_limit": 3}, "lapse_")
	if err != nil {
		t.Fatal(err)
	}
	if s.inherit() || *s.ConnectionLimit != 3 || s.elevation() {
		t.Errorf("parsed %+v", s)
	}
	e, err := parseSpec(map[string]any{"roles": []any{"app_write"}, "account": "app"}, "lapse_")
	if err != nil || !e.elevation() {
		t.Fatalf("elevation spec: %+v, %v", e, err)
	}
	tooMany := make([]any, MaxRoles+1)
	for i := range tooMany {
		tooMany[i] = "r" + strings.Repeat("x", i)
	}
	if _, err := parseSpec(map[string]any{"roles": tooMany}, "lapse_"); lapse.ErrorCode(err) != lapse.ETOOLARGE {
		t.Errorf("too many roles: %v", err)
	}
	for _, bad := range []string{"lapse_x", "public", "PUBLIC", "current_user", "a.b", "1abc", "a'b"} {
		if _, err := parseSpec(map[string]any{"roles": []any{bad}}, "lapse_"); lapse.ErrorCode(err) != lapse.EINVALID {
			t.Errorf("role %q accepted", bad)
		}
	}
}

func TestQuoteLiteralAllowList(t *testing.T) {
	for _, bad := range []string{"a'b", `a\b`, "a\x00", "a;b", "é"} {
		if _, err := quoteLiteral(bad); err == nil {
			t.Errorf("quoteLiteral(%q) accepted", bad)
		}
	}
}
