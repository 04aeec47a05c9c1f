package main

import (
	"encoding/json"
	"encoding/xml"
	"io"
	"strings"
	"testing"

	"github.com/lapsehq/lapse/zsp"
)

// lapse zsp report reads what lapse zsp test recorded, in each format.
func TestZSPReport(t *testing.T) {
	path := writeServerConfig(t, serverConfig)
	if stdout, _, err := runLapse(t, "zsp", "test", "demo-api", "-c", path); err != nil {
		t.Fatalf("zsp test: %v\n%s", err, stdout)
	}
	stdout, _, err := runLapse(t, "zsp", "report", "-c", path, "-o", "json", "--since", "1h")
	if err != nil {
		t.Fatal(err)
	}
	var rep zsp.Report
	if err := json.Unmarshal([]byte(stdout), &rep); err != nil {
		t.Fatalf("json: %v\n%s", err, stdout)
	}
	if len(rep.Canaries) != 1 || rep.Canaries[0].Target != "demo-api" || rep.Canaries[0].Result != zsp.ResultPassed {
		t.Errorf("canaries = %+v", rep.Canaries)
	}
	if len(rep.Lanes) != 1 || rep.Lanes[0].Lane != "canary" || rep.Lanes[0].Revoked != 1 {
		t.Errorf("lanes = %+v: the canary grant is its own lane", rep.Lanes)
	}
	stdout, _, err = runLapse(t, "zsp", "report", "-c", path)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"Canary results", "demo-api", "passed", "Revocation latency"} {
		if !strings.Contains(stdout, want) {
			t.Errorf("table lacks %q:\n%s", want, stdout)
		}
	}
	stdout, _, err = runLapse(t, "zsp", "report", "-c", path, "-o", "html")
	if err != nil {
		t.Fatal(err)
	}
	dec := xml.NewDecoder(strings.NewReader(stdout))
	for {
		if _, err := dec.Token(); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("html is not well-formed: %v", err)
		}
	}
	if _, _, err := runLapse(t, "zsp", "report", "-c", path, "-o", "pdf"); exitStatus(err) != exitUsage {
		t.Errorf("-o pdf: %v, want a usage error", err)
	}
}
