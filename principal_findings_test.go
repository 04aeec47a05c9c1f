package lapse

import "testing"

// Identities are lower-cased before their skeletons are compared, but the
// confusable tables map some characters to an upper-case prototype (the
// digit 0 to O, among others): without folding the skeleton too, "b0b"
// is not the same human as "bob", and can approve bob's request.
func TestFindingSkeletonsOfLowerCasedIDsAreFolded(t *testing.T) {
	for _, c := range [][2]string{
		{"bob", "b0b"},
		{"oscar", "0scar"},
		{"alice", "a1ice"}, // already the same: 1 maps to l
	} {
		a, err := NormalizeID(c[0])
		if err != nil {
			t.Fatal(err)
		}
		b, err := NormalizeID(c[1])
		if err != nil {
			t.Fatal(err)
		}
		if !SameHuman(a, b) {
			t.Errorf("SameHuman(%q, %q) = false: skeletons %q and %q", a, b, HumanKey(a), HumanKey(b))
		}
	}
	if SameHuman("alice", "alicia") || SameHuman("bob", "rob") {
		t.Error("different names became one human")
	}
}
