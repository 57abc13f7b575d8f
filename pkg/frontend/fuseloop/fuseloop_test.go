package fuseloop

import "testing"

func TestUnescapeUndoesMountinfoEscapes(t *testing.T) {
	for in, want := range map[string]string{
		`/var/lib/my\040vol/fuse`: "/var/lib/my vol/fuse",
		`/a\134b`:                 `/a\b`,
		`/plain`:                  "/plain",
		`/short\04`:               `/short\04`,
		`/tab\011x`:               "/tab\tx",
	} {
		if got := unescape(in); got != want {
			t.Errorf("unescape(%q) = %q, want %q", in, got, want)
		}
	}
}
