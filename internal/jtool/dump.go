// Package jtool holds the operator verbs of the jvol command that work on a
// journal image directly: dump and the engine demonstration.
package jtool

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/jvol-io/jvol/internal/blockrec"
	"github.com/jvol-io/jvol/internal/journal"
	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/volume"
)

// resolveJournal returns the journal image path for a volume directory or
// an image file.
func resolveJournal(path string) (string, error) {
	st, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if st.IsDir() {
		return filepath.Join(path, volume.JournalFile), nil
	}
	return path, nil
}

// Dump prints the superblock and then every live record of the journal
// image at path, one per line.
func Dump(w io.Writer, path string) error {
	path, err := resolveJournal(path)
	if err != nil {
		return err
	}
	f, err := vfs.OpenReadOnly(path)
	if err != nil {
		return err
	}
	defer f.Close()
	sb, rec, err := journal.Dump(f, func(pos uint64, r journal.Record) error {
		_, err := fmt.Fprintln(w, FormatRecord(pos, r))
		return err
	})
	if err != nil {
		return fmt.Errorf("%s: %w", path, err)
	}
	fmt.Fprintf(w, "# superblock: uuid=%x ring=%d sequence=%d checkpoint=%d checkpoint-transid=%d torn-window=%d\n",
		sb.UUID, sb.RingSize, sb.Sequence, sb.CkptPos, sb.CkptTransid, sb.TornWindow)
	fmt.Fprintf(w, "# %d records from %d to %d, last transid %d, tail: %s\n", rec.Records, rec.Start, rec.End, rec.LastTransid, rec.Tail)
	return nil
}

// FormatRecord renders one record as a line.
func FormatRecord(pos uint64, r journal.Record) string {
	var b strings.Builder
	fmt.Fprintf(&b, "pos=%d transid=%d stream=%#x flags=%s size=%d", pos, r.Transid, r.ID(), flags(r.Stream), r.Size)
	if r.IsPad() {
		b.WriteString(" pad")
		return b.String()
	}
	b.WriteString(" ")
	if err := subs(&b, r.Payload); err != nil {
		fmt.Fprintf(&b, " (payload: %v)", err)
	}
	return b.String()
}

func flags(s uint16) string {
	var f []string
	for _, x := range []struct {
		bit  uint16
		name string
	}{{journal.FlagBegin, "BEGIN"}, {journal.FlagEnd, "END"}, {journal.FlagAborted, "ABORTED"}} {
		if s&x.bit != 0 {
			f = append(f, x.name)
		}
	}
	if len(f) == 0 {
		return "-"
	}
	return strings.Join(f, "|")
}

func subs(b *strings.Builder, payload []byte) error {
	first := true
	return journal.ParseSubs(payload, func(s journal.Sub) error {
		if !first {
			b.WriteString(",")
		}
		first = false
		// Bodies that do not decode are shown as such, not as zeros.
		nums := func(name string, n int, format string) {
			if v, err := s.Uint64s(n); err != nil {
				fmt.Fprintf(b, "%s(%v)", name, err)
			} else {
				args := make([]any, n)
				for i := range v {
					args[i] = v[i]
				}
				fmt.Fprintf(b, name+format, args...)
			}
		}
		text, block := blockrec.FormatSub(s)
		switch {
		case block:
			b.WriteString(text)
		case s.Kind() == journal.SubFlush:
			b.WriteString("flush")
		case s.Kind() == journal.SubSyncPoint:
			nums("syncpoint", 2, "(transid=%d,pos=%d)")
		case s.Kind() == journal.SubAnnotate:
			fmt.Fprintf(b, "annotate(%q)", s.Body)
		default:
			fmt.Fprintf(b, "type%#x(len=%d)", s.Kind(), len(s.Body))
		}
		if s.Type&journal.SubNested != 0 {
			b.WriteString("{")
			err := subs(b, s.Body)
			b.WriteString("}")
			return err
		}
		return nil
	})
}
