package jwks

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
)

// keyHeaders name keys or key locations, or extensions Lapse does not
// implement. Honouring them is how "alg confusion" and "attacker-supplied
// key" attacks work, and ignoring them silently would hide an attack from
// the logs. (x5t, a thumbprint, names nothing to fetch; GitHub's tokens
// carry it.)
var keyHeaders = []string{"jku", "x5u", "x5c", "jwk", "crit"}

// KeyHeader returns the first header of a token's that names its own key
// (jku, x5u, x5c, jwk) or a critical extension, if any: a token carrying
// one is refused before anything else is looked at, since keys come only
// from the issuer's key set.
func KeyHeader(header map[string]any) (string, bool) {
	for _, h := range keyHeaders {
		if _, ok := header[h]; ok {
			return h, true
		}
	}
	return "", false
}

// DecodeSegment decodes one base64url segment of a compact JWT holding a
// JSON object. With useNumber, numbers stay json.Number: exact, and never
// refused for being out of a float64's range.
func DecodeSegment(seg string, useNumber bool) (map[string]any, error) {
	b, err := base64.RawURLEncoding.DecodeString(seg)
	if err != nil {
		return nil, errors.New("not base64url without padding")
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	if useNumber {
		dec.UseNumber()
	}
	var m map[string]any
	if err := dec.Decode(&m); err != nil || m == nil {
		return nil, errors.New("not a JSON object")
	}
	if dec.More() {
		return nil, errors.New("data after the JSON object")
	}
	return m, nil
}
