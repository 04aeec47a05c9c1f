package api

import (
	"net/http"

	"github.com/lapsehq/lapse"
)

// The agent lane's mandates (docs/agents.md): a human sponsor gives an AI
// agent the right to ask on the sponsor's behalf, lists and revokes it.

func (s *Server) createMandate(w http.ResponseWriter, r *http.Request) error {
	var in lapse.MandateInput
	if err := decodeJSON(w, r, &in, specMandateInput, false); err != nil {
		return err
	}
	m, err := s.Service.CreateMandate(r.Context(), in)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusCreated, m)
	return nil
}

func (s *Server) listMandates(w http.ResponseWriter, r *http.Request) error {
	q, err := parseQuery(r, "agent", "sponsor", "live", "limit")
	if err != nil {
		return err
	}
	var f lapse.MandateFilter
	if f.AgentID, err = q.principal("agent"); err != nil {
		return err
	}
	if f.SponsorID, err = q.principal("sponsor"); err != nil {
		return err
	}
	if f.Live, err = q.boolean("live"); err != nil {
		return err
	}
	if f.Limit, err = q.limit(); err != nil {
		return err
	}
	list, err := s.Service.ListMandates(r.Context(), f)
	if err != nil {
		return err
	}
	if list == nil {
		list = []*lapse.Mandate{}
	}
	writeJSON(w, http.StatusOK, struct {
		Mandates []*lapse.Mandate `json:"mandates"`
	}{list})
	return nil
}

func (s *Server) revokeMandate(w http.ResponseWriter, r *http.Request) error {
	id, err := pathID(r, lapse.PrefixMandate)
	if err != nil {
		return err
	}
	if err := noBody(w, r); err != nil {
		return err
	}
	m, err := s.Service.RevokeMandate(r.Context(), id)
	if err != nil {
		return err
	}
	writeJSON(w, http.StatusOK, m)
	return nil
}
