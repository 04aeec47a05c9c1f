package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"time"

	"github.com/lapsehq/lapse"
)

// LeafVersion is the first byte of every leaf. A change to the encoding
// gets a new version; verifiers refuse versions they do not know.
const LeafVersion = 2

// leafFields is the number of length-prefixed fields after the fixed part.
const leafFields = 11

// Entry is one event in its stored form, as a Backend hands it to Verify:
// the column values as bytes, without converting them into a lapse.Event,
// so that a million entries cost no allocations. The byte slices may be
// reused by the Backend after the callback returns.
type Entry struct {
	Seq int64
	// Time is Unix nanoseconds; HasTime is false when the event has no
	// time (stored as NULL).
	Time    int64
	HasTime bool
	Type    []byte
	// ActorID, ActorKind, Channel, RequestID, GrantID and Outcome are the
	// event's text fields, verbatim.
	ActorID   []byte
	ActorKind []byte
	Channel   []byte
	RequestID []byte
	GrantID   []byte
	Outcome   []byte
	// Act is the actor's delegation chain as stored: a JSON list of
	// principal IDs, or empty when the actor acted for itself.
	Act []byte
	// RequestHash and PolicyVersion are the request hash and policy
	// version the event records, verbatim (empty when none).
	RequestHash   []byte
	PolicyVersion []byte
	// Data is the event's JSON data exactly as stored; empty when none.
	Data []byte
	// Leaf is the stored leaf hash, or nil when the entry has not been
	// integrated into the tree yet.
	Leaf []byte
}

// EntryOf returns the stored form of e. Strings are converted, not shared.
func EntryOf(e *lapse.Event) Entry {
	en := Entry{
		Seq:       e.Seq,
		Type:      []byte(e.Type),
		ActorID:   []byte(e.ActorID),
		ActorKind: []byte(e.ActorKind),
		Channel:   []byte(e.Channel),
		RequestID: []byte(e.RequestID),
		GrantID:   []byte(e.GrantID),
		Outcome:   []byte(e.Outcome),
		// The store keeps an empty chain as NULL and any other as its
		// JSON encoding, so this is exactly what a Backend hands over.
		Act:           actBytes(e.Act),
		RequestHash:   []byte(e.RequestHash),
		PolicyVersion: []byte(e.PolicyVersion),
		Data:          []byte(e.Data),
	}
	if !e.Time.IsZero() {
		en.Time, en.HasTime = e.Time.UnixNano(), true
	}
	return en
}

// AppendLeaf appends the canonical leaf encoding of e to dst:
//
//	version  1 byte  (LeafVersion)
//	seq      8 bytes big-endian
//	time     1 byte 0 (no time) or 1 followed by 8 bytes big-endian Unix ns
//	then type, actor_id, actor_kind, channel, request_id, grant_id,
//	outcome, act, request_hash, policy_version, data: each a 4-byte
//	big-endian length and that many bytes
//
// Every field has its length in front of it, so no content — newlines,
// control characters, JSON or a copy of another encoding — can move a
// field boundary or start another entry. The sequence number is part of the
// leaf, so an entry cannot be moved, swapped or duplicated into another
// position without changing its hash.
func AppendLeaf(dst []byte, e *Entry) []byte {
	dst = append(dst, LeafVersion)
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.Seq))
	if e.HasTime {
		dst = append(dst, 1)
		dst = binary.BigEndian.AppendUint64(dst, uint64(e.Time))
	} else {
		dst = append(dst, 0)
	}
	for _, f := range [leafFields][]byte{e.Type, e.ActorID, e.ActorKind, e.Channel, e.RequestID, e.GrantID, e.Outcome,
		e.Act, e.RequestHash, e.PolicyVersion, e.Data} {
		dst = binary.BigEndian.AppendUint32(dst, uint32(len(f)))
		dst = append(dst, f...)
	}
	return dst
}

// EncodeLeaf returns the canonical leaf encoding of an event.
func EncodeLeaf(e *lapse.Event) []byte {
	en := EntryOf(e)
	return AppendLeaf(nil, &en)
}

var errBadLeaf = errors.New("audit: malformed leaf")

// ParseLeaf decodes a canonical leaf. It accepts exactly what AppendLeaf
// produces: a known version, a time flag of 0 or 1, lengths that fit, and
// nothing after the last field.
func ParseLeaf(b []byte) (*lapse.Event, error) {
	if len(b) < 1+8+1 || b[0] != LeafVersion {
		return nil, errBadLeaf
	}
	e := &lapse.Event{Seq: int64(binary.BigEndian.Uint64(b[1:9]))}
	if e.Seq <= 0 {
		return nil, errBadLeaf
	}
	b = b[9:]
	switch b[0] {
	case 0:
		b = b[1:]
	case 1:
		if len(b) < 9 {
			return nil, errBadLeaf
		}
		e.Time = time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9]))).UTC()
		b = b[9:]
	default:
		return nil, errBadLeaf
	}
	var f [leafFields][]byte
	for i := range f {
		if len(b) < 4 {
			return nil, errBadLeaf
		}
		n := binary.BigEndian.Uint32(b)
		b = b[4:]
		if uint64(n) > uint64(len(b)) {
			return nil, errBadLeaf
		}
		f[i], b = b[:n], b[n:]
	}
	if len(b) != 0 {
		return nil, errBadLeaf
	}
	e.Type, e.ActorID, e.ActorKind = string(f[0]), string(f[1]), lapse.PrincipalKind(f[2])
	e.Channel, e.RequestID, e.GrantID, e.Outcome = string(f[3]), string(f[4]), string(f[5]), string(f[6])
	if len(f[7]) > 0 {
		if err := json.Unmarshal(f[7], &e.Act); err != nil || len(e.Act) == 0 || !bytes.Equal(actBytes(e.Act), f[7]) {
			return nil, errBadLeaf // not the one encoding AppendLeaf would write
		}
	}
	e.RequestHash, e.PolicyVersion = string(f[8]), string(f[9])
	if len(f[10]) > 0 {
		e.Data = append([]byte(nil), f[10]...)
	}
	return e, nil
}

// actBytes is the stored and leaf form of a delegation chain: nothing for
// an empty one, else its JSON encoding.
func actBytes(act []string) []byte {
	if len(act) == 0 {
		return nil
	}
	b, _ := json.Marshal(act) // a list of strings always encodes
	return b
}
