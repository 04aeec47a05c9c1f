package api

import (
	"bytes"
	"context"
	_ "embed"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"sync"

	"github.com/lapsehq/lapse"
)

// OpenAPI is the checked-in OpenAPI 3.1 document of this API, served at
// /v1/openapi.yaml.
//
//go:embed openapi.yaml
var OpenAPI []byte

// encoder is a pooled buffer with its JSON encoder, so a response costs no
// new encoder and is sent with a Content-Length.
type encoder struct {
	buf bytes.Buffer
	enc *json.Encoder
}

var encoderPool = sync.Pool{New: func() any {
	e := &encoder{}
	e.enc = json.NewEncoder(&e.buf)
	return e
}}

// writeJSON sends v as the JSON body with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	e := encoderPool.Get().(*encoder)
	e.buf.Reset()
	h := w.Header()
	h.Set("Content-Type", "application/json")
	if err := e.enc.Encode(v); err != nil {
		// Only a bug can get here (an unencodable type); the body so far
		// is discarded and the caller sees an internal error.
		e.buf.Reset()
		e.buf.WriteString(`{"error":{"code":"internal","message":"internal error"}}` + "\n")
		status = http.StatusInternalServerError
	}
	h.Set("Content-Length", strconv.Itoa(e.buf.Len()))
	w.WriteHeader(status)
	_, _ = w.Write(e.buf.Bytes())
	if e.buf.Cap() <= 1<<20 {
		encoderPool.Put(e)
	}
}

// healthBody is the liveness answer. Degraded, when set, is a safe message
// saying why the server refuses new approvals and grants while it keeps
// revoking (the audit log cannot sign or publish).
type healthBody struct {
	Status   string `json:"status"`
	Degraded string `json:"degraded,omitempty"`
}

func (s *Server) healthz(w http.ResponseWriter, r *http.Request) error {
	body := healthBody{Status: "ok"}
	if msg := s.degraded(r); msg != "" {
		body = healthBody{Status: "degraded", Degraded: msg}
	}
	writeJSON(w, http.StatusOK, body)
	return nil
}

// readyBody is the readiness answer; Error is a safe message, the cause is
// logged.
type readyBody struct {
	Status   string `json:"status"`
	Error    string `json:"error,omitempty"`
	Degraded string `json:"degraded,omitempty"`
}

// readyz answers 503 only when the server cannot serve at all. A degraded
// server stays ready (200, status "degraded"): it must keep answering
// releases and revocations, and a load balancer that took every replica out
// because the shared audit sink is down would stop exactly those.
func (s *Server) readyz(w http.ResponseWriter, r *http.Request) error {
	if s.Ready != nil {
		if err := s.Ready(r.Context()); err != nil {
			s.logger().WarnContext(r.Context(), "not ready", "request_id", w.Header().Get(headerRequestID), "error", err.Error())
			writeJSON(w, http.StatusServiceUnavailable, readyBody{Status: "unavailable", Error: safeMessage(err, "not ready")})
			return nil
		}
	}
	if msg := s.degraded(r); msg != "" {
		writeJSON(w, http.StatusOK, readyBody{Status: "degraded", Degraded: msg})
		return nil
	}
	writeJSON(w, http.StatusOK, readyBody{Status: "ready"})
	return nil
}

// degraded returns why the server is degraded, as a safe message, or "".
// The cause is logged, never sent.
func (s *Server) degraded(r *http.Request) string {
	if s.Degraded == nil {
		return ""
	}
	err := s.Degraded(r.Context())
	if err == nil {
		return ""
	}
	s.logger().WarnContext(r.Context(), "degraded", "error", err.Error())
	return safeMessage(err, "degraded")
}

// safeMessage returns the message of err's *lapse.Error when it is safe to
// send (not an internal error), else fallback.
func safeMessage(err error, fallback string) string {
	if e, ok := errors.AsType[*lapse.Error](err); ok && e.Message != "" && e.Code != lapse.EINTERNAL {
		return e.Message
	}
	return fallback
}

func (s *Server) openapi(w http.ResponseWriter, r *http.Request) error {
	h := w.Header()
	h.Set("Content-Type", "application/yaml")
	h.Set("Cache-Control", "public, max-age=300")
	h.Set("Content-Length", strconv.Itoa(len(OpenAPI)))
	_, _ = w.Write(OpenAPI)
	return nil
}

func (s *Server) whoami(w http.ResponseWriter, r *http.Request) error {
	if _, err := parseQuery(r); err != nil {
		return err
	}
	p, err := s.Service.Whoami(r.Context())
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, p)
	return nil
}

func (s *Server) entitlements(w http.ResponseWriter, r *http.Request) error {
	if _, err := parseQuery(r); err != nil {
		return err
	}
	list, err := s.Service.Entitlements(r.Context())
	if err != nil {
		return err
	}
	if list == nil {
		list = []*lapse.Entitlement{}
	}
	writeJSON(w, http.StatusOK, struct {
		Entitlements []*lapse.Entitlement `json:"entitlements"`
	}{list})
	return nil
}

func (s *Server) createRequest(w http.ResponseWriter, r *http.Request) error {
	var in lapse.RequestInput
	if err := decodeJSON(w, r, &in, specRequestInput, false); err != nil {
		return err
	}
	res, err := s.Service.CreateRequest(r.Context(), in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, res)
	return nil
}

func (s *Server) listRequests(w http.ResponseWriter, r *http.Request) error {
	q, err := parseQuery(r, "state", "requester", "approvable", "review_pending", "limit")
	if err != nil {
		return err
	}
	var f lapse.RequestFilter
	switch st := lapse.RequestState(q.str("state")); st {
	case "", lapse.RequestPending, lapse.RequestApproved, lapse.RequestDenied, lapse.RequestCancelled, lapse.RequestExpired:
		f.State = st
	default:
		return lapse.FieldErrorf(lapse.EINVALID, "state", "unknown request state")
	}
	if f.RequesterID, err = q.principal("requester"); err != nil {
		return err
	}
	if f.ReviewPending, err = q.boolean("review_pending"); err != nil {
		return err
	}
	if f.Approvable, err = q.boolean("approvable"); err != nil {
		return err
	}
	if f.Limit, err = q.limit(); err != nil {
		return err
	}
	list, err := s.Service.ListRequests(r.Context(), f)
	if err != nil {
		return err
	}
	if list == nil {
		list = []*lapse.Request{}
	}
	writeJSON(w, http.StatusOK, struct {
		Requests []*lapse.Request `json:"requests"`
	}{list})
	return nil
}

// pathID returns the {id} wildcard if it is syntactically an ID with prefix.
func pathID(r *http.Request, prefix string) (string, error) {
	id := r.PathValue("id")
	if !lapse.ValidID(prefix, id) {
		return "", lapse.FieldErrorf(lapse.EINVALID, "id", "not a valid %s ID", prefix)
	}
	return id, nil
}

func (s *Server) getRequest(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, lapse.PrefixRequest)
	if err != nil {
		return err
	}
	if _, err := parseQuery(r); err != nil {
		return err
	}
	req, err := s.Service.GetRequest(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, req)
	return nil
}

func (s *Server) approve(w http.ResponseWriter, r *http.Request) error {
	return s.decide(w, r, s.Service.Approve)
}

func (s *Server) deny(w http.ResponseWriter, r *http.Request) error {
	return s.decide(w, r, s.Service.Deny)
}

func (s *Server) decide(w http.ResponseWriter, r *http.Request, fn func(ctx context.Context, id string, in lapse.DecisionInput) (*lapse.Request, error)) error {
	id, err := pathID(r, lapse.PrefixRequest)
	if err != nil {
		return err
	}
	var in lapse.DecisionInput
	if err := decodeJSON(w, r, &in, specDecisionInput, true); err != nil {
		return err
	}
	req, err := fn(r.Context(), id, in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, req)
	return nil
}

func (s *Server) cancelRequest(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, lapse.PrefixRequest)
	if err != nil {
		return err
	}
	if err := noBody(w, r); err != nil {
		return err
	}
	req, err := s.Service.CancelRequest(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, req)
	return nil
}

func (s *Server) reviewRequest(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, lapse.PrefixRequest)
	if err != nil {
		return err
	}
	var in lapse.ReviewInput
	if err := decodeJSON(w, r, &in, specReviewInput, false); err != nil {
		return err
	}
	req, err := s.Service.ReviewRequest(r.Context(), id, in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, req)
	return nil
}

func (s *Server) listGrants(w http.ResponseWriter, r *http.Request) error {
	q, err := parseQuery(r, "state", "principal", "target", "entitlement", "request", "live", "limit")
	if err != nil {
		return err
	}
	var f lapse.GrantFilter
	if st := lapse.GrantState(q.str("state")); st != "" {
		known := false
		for _, k := range lapse.AllGrantStates {
			known = known || k == st
		}
		if !known {
			return lapse.FieldErrorf(lapse.EINVALID, "state", "unknown grant state")
		}
		f.State = st
	}
	if f.PrincipalID, err = q.principal("principal"); err != nil {
		return err
	}
	if f.Target, err = q.name("target"); err != nil {
		return err
	}
	if f.Entitlement, err = q.name("entitlement"); err != nil {
		return err
	}
	if rid := q.str("request"); rid != "" {
		if !lapse.ValidID(lapse.PrefixRequest, rid) {
			return lapse.FieldErrorf(lapse.EINVALID, "request", "not a valid request ID")
		}
		f.RequestID = rid
	}
	if f.Live, err = q.boolean("live"); err != nil {
		return err
	}
	if f.Limit, err = q.limit(); err != nil {
		return err
	}
	list, err := s.Service.ListGrants(r.Context(), f)
	if err != nil {
		return err
	}
	if list == nil {
		list = []*lapse.Grant{}
	}
	writeJSON(w, http.StatusOK, struct {
		Grants []*lapse.Grant `json:"grants"`
	}{list})
	return nil
}

func (s *Server) getGrant(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, lapse.PrefixGrant)
	if err != nil {
		return err
	}
	if _, err := parseQuery(r); err != nil {
		return err
	}
	g, err := s.Service.GetGrant(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, g)
	return nil
}

func (s *Server) claimCredentials(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, lapse.PrefixGrant)
	if err != nil {
		return err
	}
	if err := noBody(w, r); err != nil {
		return err
	}
	c, err := s.Service.ClaimCredentials(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, c)
	return nil
}

func (s *Server) extend(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, lapse.PrefixGrant)
	if err != nil {
		return err
	}
	var in lapse.ExtendInput
	if err := decodeJSON(w, r, &in, specExtendInput, false); err != nil {
		return err
	}
	res, err := s.Service.ExtendGrant(r.Context(), id, in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

func (s *Server) release(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, lapse.PrefixGrant)
	if err != nil {
		return err
	}
	var in lapse.ReleaseInput
	if err := decodeJSON(w, r, &in, specReleaseInput, true); err != nil {
		return err
	}
	g, err := s.Service.Release(r.Context(), id, in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, g)
	return nil
}

func (s *Server) revoke(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, lapse.PrefixGrant)
	if err != nil {
		return err
	}
	var in lapse.RevokeInput
	if err := decodeJSON(w, r, &in, specRevokeInput, true); err != nil {
		return err
	}
	g, err := s.Service.Revoke(r.Context(), id, in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, g)
	return nil
}

func (s *Server) createAPIKey(w http.ResponseWriter, r *http.Request) error {
	var in lapse.APIKeyInput
	if err := decodeJSON(w, r, &in, specAPIKeyInput, false); err != nil {
		return err
	}
	k, err := s.Service.CreateAPIKey(r.Context(), in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, k)
	return nil
}

func (s *Server) listAPIKeys(w http.ResponseWriter, r *http.Request) error {
	if _, err := parseQuery(r); err != nil {
		return err
	}
	list, err := s.Service.ListAPIKeys(r.Context())
	if err != nil {
		return err
	}
	if list == nil {
		list = []*lapse.APIKey{}
	}
	writeJSON(w, http.StatusOK, struct {
		APIKeys []*lapse.APIKey `json:"apikeys"`
	}{list})
	return nil
}

func (s *Server) revokeAPIKey(w http.ResponseWriter, r *http.Request) error {
	prefix := r.PathValue("prefix")
	if !validKeyPrefix(prefix) {
		return lapse.FieldErrorf(lapse.EINVALID, "prefix", "not a valid API key prefix")
	}
	if err := noBody(w, r); err != nil {
		return err
	}
	k, err := s.Service.RevokeAPIKey(r.Context(), prefix)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, k)
	return nil
}
