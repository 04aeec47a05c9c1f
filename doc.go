// Package lapse holds Lapse's domain: the nouns of a just-in-time access
// broker (principals, entitlements, requests, approvals, grants, checkpoints,
// events), the application error type, and the interfaces that the other
// packages implement (the store) or serve (the broker).
//
// It imports only the standard library and golang.org/x/text, so every other
// package can depend on it without pulling in a database driver, a connector
// or the HTTP layer. See docs/architecture.md for how the pieces fit.
package lapse
