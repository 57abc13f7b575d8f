package journal

import (
	"fmt"
	"strings"
)

// FormatRecord renders record r, found at position pos, as one line of a
// dump:
//
//	pos=P transid=T stream=0xS flags=BEGIN|END|ABORTED size=N SUBS
//
// flags is "-" if none is set. SUBS is "pad" for a pad, else the
// sub-records, comma-separated, a nested list in braces after its
// sub-record, and the reason if the list does not parse. The journal
// renders the types it knows; sub, if not nil, renders others (package
// blockrec's FormatSub, block records), and what neither knows shows as
// typeX(len=N).
func FormatRecord(pos uint64, r Record, sub func(Sub) (string, bool)) string {
	var b strings.Builder
	fmt.Fprintf(&b, "pos=%d transid=%d stream=%#x flags=%s size=%d", pos, r.Transid, r.ID(), flagNames(r.Stream), r.Size)
	if r.IsPad() {
		b.WriteString(" pad")
		return b.String()
	}
	b.WriteString(" ")
	if err := formatSubs(&b, r.Payload, sub); err != nil {
		fmt.Fprintf(&b, " (payload: %v)", err)
	}
	return b.String()
}

func flagNames(stream uint16) string {
	var f []string
	for _, x := range []struct {
		bit  uint16
		name string
	}{{FlagBegin, "BEGIN"}, {FlagEnd, "END"}, {FlagAborted, "ABORTED"}} {
		if stream&x.bit != 0 {
			f = append(f, x.name)
		}
	}
	if len(f) == 0 {
		return "-"
	}
	return strings.Join(f, "|")
}

func formatSubs(b *strings.Builder, payload []byte, sub func(Sub) (string, bool)) error {
	first := true
	return ParseSubs(payload, func(s Sub) error {
		if !first {
			b.WriteString(",")
		}
		first = false
		if text, ok := formatSub(s, sub); ok {
			b.WriteString(text)
		} else {
			fmt.Fprintf(b, "type%#x(len=%d)", s.Kind(), len(s.Body))
		}
		if s.Type&SubNested != 0 {
			b.WriteString("{")
			err := formatSubs(b, s.Body, sub)
			b.WriteString("}")
			return err
		}
		return nil
	})
}

// formatSub renders a sub-record of a type the journal knows, a body that
// does not decode as such, not as zeros; else it asks sub.
func formatSub(s Sub, sub func(Sub) (string, bool)) (string, bool) {
	switch s.Kind() {
	case SubFlush:
		return "flush", true
	case SubSyncPoint:
		v, err := s.Uint64s(2)
		if err != nil {
			return fmt.Sprintf("syncpoint(%v)", err), true
		}
		return fmt.Sprintf("syncpoint(transid=%d,pos=%d)", v[0], v[1]), true
	case SubAnnotate:
		return fmt.Sprintf("annotate(%q)", s.Body), true
	}
	if sub == nil {
		return "", false
	}
	return sub(s)
}
