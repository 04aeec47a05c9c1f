package main

import (
	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api/client"
)

// newHTTPService connects to the Lapse server over its HTTP API. Actions
// are recorded in the audit trail as coming through the CLI.
func newHTTPService(cfg clientConfig) (lapse.Service, error) {
	c := client.New(cfg.Server, cfg.Token)
	c.Channel = lapse.ChannelCLI
	c.UserAgent = "lapse-cli"
	return c, nil
}
