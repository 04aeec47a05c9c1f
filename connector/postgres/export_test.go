package postgres

import "crypto/rand"

// Revoke steps a test can leave out, to show that Verify notices an
// incomplete revocation.
const (
	StepFence     = stepFence
	StepTerminate = stepTerminate
	StepDrop      = stepDrop
)

// SkipRevokeSteps makes c's Revoke leave out the named steps (comma
// separated), as a buggy or sabotaged revocation would.
func SkipRevokeSteps(c *Conn, steps string) { c.skip = steps }

// SCRAMVerifier computes a verifier with a random salt, for benchmarks that
// issue the connector's statements through a bare client.
func SCRAMVerifier(password string, iterations int) (string, error) {
	var salt [saltBytes]byte
	if _, err := rand.Read(salt[:]); err != nil {
		return "", err
	}
	return scramVerifier(password, salt[:], iterations)
}

// LargestBatches reports the largest Revoke and Verify batches c has run.
func LargestBatches(c *Conn) (revoke, verify int) {
	return c.revokes.Largest(), c.verifies.Largest()
}

// GrantOptionCheckAge is how old a grant-option check Grant may reuse.
const GrantOptionCheckAge = grantOptionCheckAge

// WaitRiskRenewals waits until c's background renewals of grant-option
// checks have finished.
func WaitRiskRenewals(c *Conn) { c.renewals.Wait() }
