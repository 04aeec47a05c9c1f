package notify

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"strconv"
	"strings"
	"time"

	"github.com/lapsehq/lapse"
)

// Headers of every webhook call (docs/notifications.md).
const (
	// SignatureHeader carries "t=<unix seconds>,v1=<hex>", where the hex is
	// HMAC-SHA256 keyed with the webhook's secret over the decimal
	// timestamp, a full stop, and the raw body: "<t>.<body>". The
	// timestamp is when this attempt was sent (a retry is signed afresh),
	// so a receiver that refuses timestamps outside its window and
	// remembers the IdempotencyHeader values it saw within that window
	// refuses every replay.
	SignatureHeader = "Lapse-Signature"
	// IdempotencyHeader carries the notification's ID (Notification.ID):
	// the same on every attempt and after a restart, so an at-least-once
	// delivery is processed once.
	IdempotencyHeader = "Idempotency-Key"
	// EventHeader carries the notification's type (Notification.Type).
	EventHeader = "Lapse-Event"
	// AttemptHeader carries the attempt number, from 1.
	AttemptHeader = "Lapse-Attempt"
)

// DefaultTolerance is the replay window Verify applies when given none:
// a signature whose timestamp is further than this from the receiver's
// clock, either way, is refused.
const DefaultTolerance = 5 * time.Minute

// Sign returns the SignatureHeader value for body sent at t.
func Sign(secret []byte, t time.Time, body []byte) string {
	ts := strconv.FormatInt(t.Unix(), 10)
	return "t=" + ts + ",v1=" + hex.EncodeToString(mac(secret, ts, body))
}

func mac(secret []byte, ts string, body []byte) []byte {
	m := hmac.New(sha256.New, secret)
	m.Write([]byte(ts))
	m.Write([]byte{'.'})
	m.Write(body)
	return m.Sum(nil)
}

// Verify is what a receiver runs on a call: it checks that header (the
// SignatureHeader value) is a signature of body by secret, made within
// tolerance of now (DefaultTolerance when tolerance is not positive). Any
// of several v1 values may match, so a receiver can be given a new secret
// while the old one is still in use. The comparison takes constant time.
//
// Returns EUNAUTHORIZED with reason ReasonBadSignature when the header is
// malformed or no signature matches, ReasonStale when the timestamp is
// outside the window.
func Verify(secret []byte, header string, body []byte, now time.Time, tolerance time.Duration) error {
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	refuse := func(reason, msg string) error {
		return &lapse.Error{Code: lapse.EUNAUTHORIZED, Reason: reason, Message: msg}
	}
	var ts string
	var sigs [][]byte
	for part := range strings.SplitSeq(header, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(part), "=")
		if !ok {
			continue
		}
		switch k {
		case "t":
			ts = v
		case "v1":
			if b, err := hex.DecodeString(v); err == nil && len(b) == sha256.Size {
				sigs = append(sigs, b)
			}
		}
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil || len(sigs) == 0 {
		return refuse(ReasonBadSignature, "the signature header is not t=<unix>,v1=<hex>")
	}
	want := mac(secret, ts, body)
	ok := false
	for _, s := range sigs {
		ok = hmac.Equal(s, want) || ok
	}
	if !ok {
		return refuse(ReasonBadSignature, "no signature matches the body")
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return refuse(ReasonStale, "the signature's timestamp is outside the replay window")
	}
	return nil
}
