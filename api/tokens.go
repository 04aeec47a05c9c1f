package api

import (
	"bytes"
	"context"
	"errors"
	"mime"
	"net/http"
	"net/url"
	"strconv"
	"time"

	"github.com/lapsehq/lapse"
)

// tokenTarget returns the token target named by the {name} wildcard.
func (s *Server) tokenTarget(r *http.Request) (TokenTarget, error) {
	name := r.PathValue("name")
	if !validName(name) {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "name", "not a valid target name")
	}
	t, ok := s.Tokens[name]
	if !ok || t == nil {
		return nil, lapse.FieldErrorf(lapse.ENOTFOUND, "name", "no token target named %q", name)
	}
	return t, nil
}

func (s *Server) jwks(w http.ResponseWriter, r *http.Request) error {
	t, err := s.tokenTarget(r)
	if err != nil {
		return err
	}
	if _, err := parseQuery(r); err != nil {
		return err
	}
	set := t.JWKS()
	// Public keys: caches may keep them briefly. A key rotation publishes
	// the new key before it signs, so a short cache never rejects a token.
	w.Header().Set("Cache-Control", "public, max-age=60")
	writeJSON(w, http.StatusOK, &set)
	return nil
}

// introspect implements RFC 7662: a form with token= (and optionally
// token_type_hint=), answered with the introspection object. The token may
// only travel in the body, never in the URL, where logs would keep it.
func (s *Server) introspect(w http.ResponseWriter, r *http.Request) error {
	t, err := s.tokenTarget(r)
	if err != nil {
		return err
	}
	if r.URL.RawQuery != "" {
		return lapse.FieldErrorf(lapse.EINVALID, "query", "introspection takes its parameters in the form body only")
	}
	form, err := readForm(w, r)
	if err != nil {
		return err
	}
	for k, v := range form {
		if k != "token" && k != "token_type_hint" {
			return lapse.FieldErrorf(lapse.EINVALID, k, "unknown form parameter %q", k)
		}
		if len(v) > 1 {
			return lapse.FieldErrorf(lapse.EINVALID, k, "form parameter %q given more than once", k)
		}
	}
	tok := form.Get("token")
	if tok == "" {
		return lapse.FieldErrorf(lapse.EINVALID, "token", "token is required")
	}
	// The caller asks before serving a request: this is a use of the
	// token, counted when its entitlement limits uses.
	res, err := t.IntrospectUse(r.Context(), tok)
	if err != nil {
		return err
	}
	if res.UseLimitReached {
		s.endUsedUp(r.Context(), res.GrantID)
	}
	writeJSON(w, http.StatusOK, res)
	return nil
}

// UseLimitPrincipal is the system principal that ends a grant whose token
// has used up its entitlement's max_uses.
var UseLimitPrincipal = lapse.Principal{
	ID:           "lapse:use-limit",
	Kind:         lapse.KindService,
	Name:         "Lapse use limit",
	Scopes:       []string{lapse.ScopeRevoke},
	CredentialID: "system",
}

// UseLimitReason is the reason recorded on a grant ended by its use limit.
const UseLimitReason = "use limit reached"

// endUsedUp revokes grant id, whose token has just been used past its
// limit (and is already on the revocation feed, so it is inactive
// everywhere). The revocation is the ordinary one: the engine revokes on
// the target and verifies every checkpoint. It does not wait for that, and
// it outlives the introspection request. A failure is logged: the token
// stays inactive, and the grant still ends at its deadline.
func (s *Server) endUsedUp(ctx context.Context, id string) {
	if !lapse.ValidID(lapse.PrefixGrant, id) {
		return
	}
	p := UseLimitPrincipal
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	ctx = lapse.NewContext(lapse.WithChannel(ctx, lapse.ChannelSystem), &p)
	if _, err := s.Service.Revoke(ctx, id, lapse.RevokeInput{Reason: UseLimitReason}); err != nil {
		s.logger().Error("cannot end a grant whose token reached its use limit", "grant", id, "err", err)
		return
	}
	s.logger().Info("grant ended: use limit reached", "grant", id)
}

// readForm reads an application/x-www-form-urlencoded body of at most
// MaxFormBody bytes.
func readForm(w http.ResponseWriter, r *http.Request) (url.Values, error) {
	if r.ContentLength > MaxFormBody {
		return nil, lapse.FieldErrorf(lapse.ETOOLARGE, "body", "request body is larger than %d bytes", MaxFormBody)
	}
	mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type"))
	if err != nil || mt != "application/x-www-form-urlencoded" {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "Content-Type", "request body must be application/x-www-form-urlencoded")
	}
	var buf bytes.Buffer
	if r.Body != nil {
		if _, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, MaxFormBody)); err != nil {
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				return nil, lapse.FieldErrorf(lapse.ETOOLARGE, "body", "request body is larger than %d bytes", MaxFormBody)
			}
			return nil, lapse.FieldErrorf(lapse.EINVALID, "body", "cannot read request body")
		}
	}
	form, err := url.ParseQuery(buf.String())
	if err != nil {
		return nil, lapse.FieldErrorf(lapse.EINVALID, "body", "malformed form body")
	}
	return form, nil
}

// FeedPage is the answer of the revocation feed: the entries after the
// requested sequence, and the sequence to ask after next time.
type FeedPage struct {
	Revocations []*lapse.TokenRevocation `json:"revocations"`
	Next        int64                    `json:"next"`
}

func (s *Server) feed(w http.ResponseWriter, r *http.Request) error {
	t, err := s.tokenTarget(r)
	if err != nil {
		return err
	}
	q, err := parseQuery(r, "after", "limit")
	if err != nil {
		return err
	}
	var after int64
	if q.has("after") {
		after, err = strconv.ParseInt(q.str("after"), 10, 64)
		if err != nil || after < 0 {
			return lapse.FieldErrorf(lapse.EINVALID, "after", "after must be a non-negative integer")
		}
	}
	// An absent limit is 0: the target's own default page size.
	limit, err := q.limit()
	if err != nil {
		return err
	}
	list, err := t.Feed(r.Context(), after, limit)
	if err != nil {
		return err
	}
	page := FeedPage{Revocations: list, Next: after}
	if page.Revocations == nil {
		page.Revocations = []*lapse.TokenRevocation{}
	}
	for _, rev := range list {
		page.Next = max(page.Next, rev.Seq)
	}
	writeJSON(w, http.StatusOK, &page)
	return nil
}

// ackInput is the body of a feed acknowledgement. Seq is a pointer so that
// a missing seq is an error rather than an acknowledgement of 0.
type ackInput struct {
	Consumer string `json:"consumer"`
	Seq      *int64 `json:"seq"`
}

// Ack is the answer to a feed acknowledgement.
type Ack struct {
	Consumer string `json:"consumer"`
	Seq      int64  `json:"seq"`
}

func (s *Server) ack(w http.ResponseWriter, r *http.Request) error {
	t, err := s.tokenTarget(r)
	if err != nil {
		return err
	}
	var in ackInput
	if err := decodeJSON(w, r, &in, specAckInput, false); err != nil {
		return err
	}
	if in.Consumer == "" {
		return lapse.FieldErrorf(lapse.EINVALID, "consumer", "consumer is required")
	}
	consumer, err := lapse.NormalizeID(in.Consumer)
	if err != nil {
		return lapse.FieldErrorf(lapse.EINVALID, "consumer", "%s", lapse.ErrorMessage(err))
	}
	if in.Seq == nil {
		return lapse.FieldErrorf(lapse.EINVALID, "seq", "seq is required")
	}
	if *in.Seq < 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "seq", "seq must not be negative")
	}
	// A consumer acknowledges for itself only: an acknowledgement is
	// evidence that this consumer dropped the tokens, and nobody may give
	// that evidence on another's behalf.
	if p := lapse.FromContext(r.Context()); p == nil || p.ID != consumer {
		return lapse.FieldErrorf(lapse.EFORBIDDEN, "consumer", "a consumer can only acknowledge as itself")
	}
	if err := t.Ack(r.Context(), consumer, *in.Seq); err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, Ack{Consumer: consumer, Seq: *in.Seq})
	return nil
}
