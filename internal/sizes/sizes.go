// Package sizes parses byte sizes as the jvol command line takes them:
// a whole number with an optional binary suffix Ki, Mi, Gi or Ti.
package sizes

import (
	"fmt"
	"math"
	"strconv"
	"strings"
)

var suffixes = []struct {
	s     string
	shift uint
}{{"Ki", 10}, {"Mi", 20}, {"Gi", 30}, {"Ti", 40}}

// Parse returns the number of bytes s names.
func Parse(s string) (int64, error) {
	num, shift := s, uint(0)
	for _, x := range suffixes {
		if strings.HasSuffix(s, x.s) {
			num, shift = strings.TrimSuffix(s, x.s), x.shift
			break
		}
	}
	n, err := strconv.ParseInt(num, 10, 64)
	if err != nil || n < 0 {
		return 0, fmt.Errorf("size %q: want a whole number of bytes with an optional Ki, Mi, Gi or Ti suffix", s)
	}
	if n > math.MaxInt64>>shift {
		return 0, fmt.Errorf("size %q is too large", s)
	}
	return n << shift, nil
}

// Flag is a size command-line flag (flag.Value): the bytes it names, 0 if
// it is not given.
type Flag int64

func (f *Flag) String() string {
	if f == nil || *f == 0 {
		return ""
	}
	return strconv.FormatInt(int64(*f), 10)
}

func (f *Flag) Set(s string) error {
	n, err := Parse(s)
	*f = Flag(n)
	return err
}
