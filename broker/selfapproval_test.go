package broker_test

import (
	"context"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/sqlstore/sqltest"
)

// selfSpelling is one way to write the requester's identity.
type selfSpelling struct {
	name, id string
	// valid says NormalizeID accepts it (and it is then the requester's
	// ID, or a look-alike of it); the others must be refused there.
	valid bool
}

// selfSpellings are the requester's ID "alice" written so that a person
// reads it as alice. Every one must end, after normalisation, as the same
// human, or be refused as an identifier at all.
var selfSpellings = []selfSpelling{
	{"exact", "alice", true},
	{"upper case", "ALICE", true},
	{"surrounding spaces", "  alice\t", true},
	{"full-width", "ａｌｉｃｅ", true},
	{"Cyrillic a", "\u0430lice", true},
	{"Cyrillic i", "al\u0456ce", true},
	{"zero-width space", "ali\u200bce", false},
	{"zero-width joiner", "ali\u200dce", false},
	{"zero-width non-joiner", "alic\u200ce", false},
	{"word joiner", "alice\u2060", false},
	{"byte order mark", "\ufeffalice", false},
	{"soft hyphen", "ali\u00adce", false},
	// Invisible, but not format characters (Cf): default-ignorable
	// code points that render as nothing.
	{"combining grapheme joiner", "ali\u034fce", false},
	{"variation selector", "alice\ufe0f", false},
	{"Mongolian variation selector", "ali\u180bce", false},
	{"Hangul filler", "alice\u3164", false},
}

// selfCatalog adds an entitlement that one approver from the approvers'
// group decides, open to people and to agents acting for them.
func selfCatalog() []*lapse.Entitlement {
	return append(catalog(), &lapse.Entitlement{Name: "self/check", Target: "fake",
		Lanes:           []lapse.PrincipalKind{lapse.KindHuman, lapse.KindAgent},
		DefaultDuration: lapse.Duration(15 * time.Minute), MaxDuration: lapse.Duration(time.Hour),
		Approval: lapse.ApprovalRule{Required: 1, Approvers: []string{"group:approvers"}}})
}

// selfRequester is alice as she files requests. She is an approver too, so
// only being the requester keeps her from deciding.
var selfRequester = &lapse.Principal{ID: "alice", Kind: lapse.KindHuman, Groups: []string{"developers", "approvers"},
	Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest, lapse.ScopeApprove}}

// TestSelfApprovalIsRefused: a requester tries to decide her own request
// through the broker as herself, with an admin-scoped credential, through
// an agent acting for her, and on a request her agent filed for her; under
// every spelling of her identity. All are refused, and the request's count
// does not move.
func TestSelfApprovalIsRefused(t *testing.T) {
	for _, db := range []struct {
		name string
		open func(testing.TB) lapse.Store
	}{{"sqlite", func(tb testing.TB) lapse.Store { return sqltest.OpenSQLite(tb) }}, {"postgres", func(tb testing.TB) lapse.Store { return sqltest.OpenPostgres(tb) }}} {
		t.Run(db.name, func(t *testing.T) {
			e := newEnv(t, db.open(t))
			if err := e.broker.SetCatalog(selfCatalog()); err != nil {
				t.Fatal(err)
			}
			agent := &lapse.Principal{ID: "helper", Kind: lapse.KindAgent, Groups: []string{"approvers"},
				Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest, lapse.ScopeApprove}}
			e.mandate(selfRequester, agent.ID, 30*time.Minute, "self/check")
			for _, sp := range selfSpellings {
				t.Run(sp.name, func(t *testing.T) { selfApprovalRefused(t, e, agent, sp) })
			}
		})
	}
}

func selfApprovalRefused(t *testing.T, e *env, agent *lapse.Principal, sp selfSpelling) {
	id, err := lapse.NormalizeID(sp.id)
	if !sp.valid {
		if err == nil {
			t.Errorf("NormalizeID(%q) = %q, accepted: an identifier that reads as \"alice\" but is another principal (HumanKey %q, SameHuman(alice) = %v)",
				sp.id, id, lapse.HumanKey(id), lapse.SameHuman("alice", id))
			// Go on: what follows shows what such a principal can do.
		} else {
			wantCode(t, err, lapse.EINVALID)
			return
		}
	} else if err != nil {
		t.Fatalf("NormalizeID(%q): %v", sp.id, err)
	}
	spelledAs := func(scopes ...string) *lapse.Principal {
		return &lapse.Principal{ID: id, Kind: lapse.KindHuman, Name: sp.id, Groups: selfRequester.Groups, Scopes: scopes}
	}
	// Who tries: the requester with the approve scope, with an admin
	// key, and her agent acting for her (with every scope an agent key
	// could carry). Each tries to approve and to deny.
	self := spelledAs(lapse.ScopeRead, lapse.ScopeApprove)
	admin := spelledAs(lapse.ScopeAdmin)
	forHer := &lapse.Principal{ID: agent.ID, Kind: lapse.KindAgent, Groups: agent.Groups, Act: []string{id},
		Scopes: []string{lapse.ScopeRead, lapse.ScopeRequest, lapse.ScopeApprove, lapse.ScopeAdmin}}

	// Her own request, one her agent filed for her, and (when the
	// spelling is a look-alike) one filed by the look-alike and decided
	// by alice as she is usually written.
	own := e.fileSelf(t, selfRequester, lapse.RequestInput{Entitlement: "self/check"})
	filed := e.fileSelf(t, agent, lapse.RequestInput{Entitlement: "self/check"})
	if filed.Requester.ID != agent.ID || len(filed.Requester.Act) != 1 || filed.Requester.Act[0] != "alice" {
		t.Fatalf("the agent's request was filed as %+v", filed.Requester)
	}
	cases := []struct {
		what    string
		r       *lapse.Request
		callers []*lapse.Principal
	}{
		{"her own request", own, []*lapse.Principal{self, admin, forHer}},
		{"the request her agent filed for her", filed, []*lapse.Principal{self, admin, forHer, agent}},
	}
	if id != "alice" {
		lookalike := &lapse.Principal{ID: id, Kind: lapse.KindHuman, Groups: selfRequester.Groups, Scopes: selfRequester.Scopes}
		mirrored := e.fileSelf(t, lookalike, lapse.RequestInput{Entitlement: "self/check"})
		cases = append(cases, struct {
			what    string
			r       *lapse.Request
			callers []*lapse.Principal
		}{"the look-alike's request, decided as alice", mirrored, []*lapse.Principal{selfRequester,
			{ID: "alice", Kind: lapse.KindHuman, Groups: selfRequester.Groups, Scopes: []string{lapse.ScopeAdmin}}}})
	}
	for _, c := range cases {
		for _, p := range c.callers {
			for _, deny := range []bool{false, true} {
				verb, decide := "approve", e.broker.Approve
				if deny {
					verb, decide = "deny", e.broker.Deny
				}
				_, err := decide(as(p), c.r.ID, lapse.DecisionInput{RequestHash: c.r.Hash})
				if code := lapse.ErrorCode(err); code != lapse.EFORBIDDEN {
					t.Errorf("%s: %s as %q (%s, act %v, scopes %v): %v, want %s", c.what, verb, p.ID, p.Kind, p.Act, p.Scopes, err, lapse.EFORBIDDEN)
				}
				e.wantUndecided(t, c.r.ID, c.what+": after "+verb+" as "+p.ID)
			}
		}
		// The refusals were about who asked: another approver decides.
		r, err := e.broker.Approve(as(bob), c.r.ID, lapse.DecisionInput{RequestHash: c.r.Hash})
		if err != nil || r.State != lapse.RequestApproved || len(r.Approvals) != 1 {
			t.Fatalf("%s: bob's approval: %v, %+v", c.what, err, r)
		}
	}
}

// fileSelf files a request and returns it.
func (e *env) fileSelf(t *testing.T, p *lapse.Principal, in lapse.RequestInput) *lapse.Request {
	t.Helper()
	res, err := e.broker.CreateRequest(as(p), in)
	if err != nil {
		t.Fatalf("file %s as %s: %v", in.Entitlement, p.ID, err)
	}
	if res.Request.State != lapse.RequestPending {
		t.Fatalf("request of %s is %s, want pending", p.ID, res.Request.State)
	}
	return res.Request
}

// wantUndecided checks that request id is pending with no vote stored and
// no vote or decision in the log.
func (e *env) wantUndecided(t *testing.T, id, what string) {
	t.Helper()
	ctx := context.Background()
	r, err := e.store.GetRequest(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if r.State != lapse.RequestPending || len(r.Approvals) != 0 {
		t.Fatalf("%s: request %s with %d votes stored, want pending with none", what, r.State, len(r.Approvals))
	}
	evs, err := e.store.ListEvents(ctx, lapse.EventFilter{RequestID: id, Limit: lapse.MaxListLimit})
	if err != nil {
		t.Fatal(err)
	}
	for _, ev := range evs {
		switch ev.Type {
		case lapse.EventRequestApproved, lapse.EventRequestDenied, lapse.EventRequestDecided:
			t.Fatalf("%s: the log holds %s by %s", what, ev.Type, ev.ActorID)
		}
	}
}
