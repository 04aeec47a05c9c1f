package mariadb

// Sabotage makes the named Revoke step ("kill", "definers", "grantor",
// "drop", "event") silently do nothing, or restores it. Tests use it to
// prove that Verify, which trusts nothing Revoke did, catches a revoke that
// silently failed.
func Sabotage(c *Conn, step string, on bool) {
	if c.sabotage == nil {
		c.sabotage = map[string]bool{}
	}
	c.sabotage[step] = on
}

// VerifyReads returns the catalog reads Verify makes for one user, each
// with its arguments, so that a benchmark can issue the same reads from a
// bare client.
func VerifyReads(user string) (queries []string, args [][]any) {
	users := []string{user}
	return []string{catalogSQL(1, true), definitionsSQL(1)},
		[][]any{catalogArgs(users, true), definitionsArgs(users)}
}

// LargestBatches returns the largest batch each batcher has run: catalog
// reads, process list reads, drops.
func LargestBatches(c *Conn) (trace, process, drop int) {
	return c.traceBatches.Largest(), c.processBatches.Largest(), c.dropBatches.Largest()
}
