package lapse

import "time"

// APIKey is a scoped, expiring, revocable credential for a principal. The
// secret is shown once at creation; the store keeps only its hash. The
// public prefix identifies the key in lists and logs.
//
// Wire format of the secret: "lapse_" + Prefix + "_" + 43 base64url chars
// (256 random bits).
type APIKey struct {
	ID        string    `json:"id"` // equals Prefix
	Prefix    string    `json:"prefix"`
	Principal Principal `json:"principal"`
	Scopes    []string  `json:"scopes"`
	Name      string    `json:"name,omitempty"`
	// Hash is SHA-256 of the full secret. The secret has 256 bits of
	// entropy, so a fast hash is the right tool: nothing to brute-force.
	Hash       []byte    `json:"-"`
	CreatedAt  time.Time `json:"created_at"`
	ExpiresAt  time.Time `json:"expires_at,omitzero"`
	RevokedAt  time.Time `json:"revoked_at,omitzero"`
	LastUsedAt time.Time `json:"last_used_at,omitzero"`
	CreatedBy  string    `json:"created_by,omitempty"`
}

// APIKeyInput is what an administrator sends to create a key.
type APIKeyInput struct {
	PrincipalID   string        `json:"principal_id"`
	PrincipalKind PrincipalKind `json:"principal_kind"`
	Groups        []string      `json:"groups,omitempty"`
	Scopes        []string      `json:"scopes"`
	Name          string        `json:"name,omitempty"`
	TTL           Duration      `json:"ttl,omitempty"`
}

// NewAPIKey is a created key with its secret, returned exactly once.
type NewAPIKey struct {
	APIKey
	Secret string `json:"secret"`
}
