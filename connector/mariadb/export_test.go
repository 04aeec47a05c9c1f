package mariadb

// Sabotage makes the named Revoke step ("lock", "kill", "definers",
// "grantor", "drop", "event") silently do nothing, or restores it. Tests use
// it to prove that Verify, which trusts nothing Revoke did, catches a
// revoke that silently failed.
func Sabotage(c *Conn, step string, on bool) {
	if c.sabotage == nil {
		c.sabotage = map[string]bool{}
	}
	c.sabotage[step] = on
}
