package api

import (
	"context"
	"net/http"
	"strconv"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/audit"
)

// AuditLog is what the API needs from the tamper-evident log: signed
// checkpoints, proofs and receipts. *audit.Log implements it.
type AuditLog interface {
	Latest(ctx context.Context) (*audit.Checkpoint, error)
	Inclusion(ctx context.Context, seq int64, size uint64) (*audit.InclusionProof, error)
	Consistency(ctx context.Context, from, to uint64) (*audit.ConsistencyProof, error)
	Receipt(ctx context.Context, g *lapse.Grant) ([]byte, error)
	SignNow(ctx context.Context) (*audit.Checkpoint, error)
	VerifierKey() string
}

var _ AuditLog = (*audit.Log)(nil)

// AuditCheckpoint is the latest signed tree head.
type AuditCheckpoint struct {
	Origin string `json:"origin"`
	Size   uint64 `json:"size"`
	Root   []byte `json:"root"`
	// Checkpoint is the signed note, exactly as published to the sinks.
	Checkpoint string `json:"checkpoint"`
	// VerifierKey is the log's public key. Pin it out of band: a key
	// fetched from the server being checked proves nothing.
	VerifierKey string `json:"verifier_key"`
}

func (s *Server) auditLog() (AuditLog, error) {
	if s.Audit == nil {
		return nil, lapse.Errorf(lapse.EUNAVAILABLE, "the audit log is not configured on this server")
	}
	return s.Audit, nil
}

func (s *Server) auditCheckpoint(w http.ResponseWriter, r *http.Request) error {
	l, err := s.auditLog()
	if err != nil {
		return err
	}
	if _, err := parseQuery(r); err != nil {
		return err
	}
	cp, err := l.Latest(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, &AuditCheckpoint{
		Origin: cp.Origin, Size: cp.Size, Root: cp.Root, Checkpoint: string(cp.Note), VerifierKey: l.VerifierKey(),
	})
	return nil
}

// signCheckpoint integrates and signs the log now and answers the new
// checkpoint; it needs the admin scope (it uses the signing key). A sink
// that refuses the checkpoint does not undo it: it is stored and signed,
// and the answer is EUNAVAILABLE so the caller knows it is not published.
func (s *Server) signCheckpoint(w http.ResponseWriter, r *http.Request) error {
	l, err := s.auditLog()
	if err != nil {
		return err
	}
	if p := lapse.FromContext(r.Context()); p == nil || !p.HasScope(lapse.ScopeAdmin) {
		return lapse.Errorf(lapse.EFORBIDDEN, "signing a checkpoint on demand needs the admin scope")
	}
	if _, err := parseQuery(r); err != nil {
		return err
	}
	cp, err := l.SignNow(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, &AuditCheckpoint{
		Origin: cp.Origin, Size: cp.Size, Root: cp.Root, Checkpoint: string(cp.Note), VerifierKey: l.VerifierKey(),
	})
	return nil
}

func (s *Server) inclusionProof(w http.ResponseWriter, r *http.Request) error {
	l, err := s.auditLog()
	if err != nil {
		return err
	}
	q, err := parseQuery(r, "seq", "size")
	if err != nil {
		return err
	}
	seq, err := positive(q, "seq", true)
	if err != nil {
		return err
	}
	size, err := positive(q, "size", false)
	if err != nil {
		return err
	}
	p, err := l.Inclusion(r.Context(), int64(seq), size)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) consistencyProof(w http.ResponseWriter, r *http.Request) error {
	l, err := s.auditLog()
	if err != nil {
		return err
	}
	q, err := parseQuery(r, "from", "to")
	if err != nil {
		return err
	}
	from, err := positive(q, "from", true)
	if err != nil {
		return err
	}
	to, err := positive(q, "to", false)
	if err != nil {
		return err
	}
	p, err := l.Consistency(r.Context(), from, to)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

// positive reads a positive integer query parameter; an absent optional
// one is 0.
func positive(q query, name string, required bool) (uint64, error) {
	if !q.has(name) {
		if required {
			return 0, lapse.FieldErrorf(lapse.EINVALID, name, "%s is required", name)
		}
		return 0, nil
	}
	n, err := strconv.ParseUint(q.str(name), 10, 63)
	if err != nil || n == 0 {
		return 0, lapse.FieldErrorf(lapse.EINVALID, name, "%s must be a positive integer", name)
	}
	return n, nil
}

// grantReceipt serves the signed receipt of a revoked grant to whoever may
// see the grant. The body is the receipt file byte for byte: re-encoding
// it would break its signature.
func (s *Server) grantReceipt(w http.ResponseWriter, r *http.Request) error {
	l, err := s.auditLog()
	if err != nil {
		return err
	}
	id, err := pathID(r, lapse.PrefixGrant)
	if err != nil {
		return err
	}
	if _, err := parseQuery(r); err != nil {
		return err
	}
	// The Service decides who may see the grant.
	g, err := s.Service.GetGrant(r.Context(), id)
	if err != nil {
		return err
	}
	file, err := l.Receipt(r.Context(), g)
	if err != nil {
		return err
	}
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(file)))
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(file)
	return nil
}
