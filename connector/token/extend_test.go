package token

import (
	"testing"

	"github.com/lapsehq/lapse/connector"
)

// A token carries its own expiry in a signed claim: nothing can move it,
// so the token connector must never claim it can extend a grant.
func TestTokensCannotBeExtended(t *testing.T) {
	if _, ok := any((*Conn)(nil)).(connector.Extender); ok {
		t.Fatal("token.Conn implements connector.Extender, but a signed token's exp cannot change")
	}
}
