package catalog

import (
	"context"
	"errors"
	"io/fs"
	"math/rand/v2"
	"testing"

	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/jvol-io/jvol/internal/vfs"
	"github.com/jvol-io/jvol/internal/vfs/faultfs"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// A power cut at any step of a change leaves a Journal's file as it was
// before the change or as it is after, whole; once the change has
// returned, as it is after.
func TestFilesSurviveAPowerCutAtEveryStep(t *testing.T) {
	ctx := context.Background()
	journal := func() *v1.Journal {
		return &v1.Journal{ObjectMeta: metav1.ObjectMeta{Name: "v", Finalizers: []string{v1.Finalizer}},
			Spec: v1.JournalSpec{Node: "n", Capacity: resource.MustParse("1Gi")}}
	}
	get := func(f *Files) *v1.Journal {
		j, err := f.Get(ctx, "v")
		if err != nil {
			t.Fatal(err)
		}
		return j
	}
	create := func(f *Files) {
		if err := f.Create(ctx, journal()); err != nil {
			t.Fatal(err)
		}
	}
	cases := []struct {
		name    string
		prepare func(f *Files)
		change  func(f *Files) error
	}{
		{"creating a Journal", nil, func(f *Files) error { return f.Create(ctx, journal()) }},
		{"growing a Journal's capacity", create, func(f *Files) error {
			j := get(f)
			j.Spec.Capacity = resource.MustParse("2Gi")
			return f.Update(ctx, j)
		}},
		{"setting a Journal's status", create, func(f *Files) error {
			j := get(f)
			j.Status.Phase = v1.PhaseReady
			return f.UpdateStatus(ctx, j)
		}},
		{"deleting a Journal that has a finalizer", create, func(f *Files) error { return f.Delete(ctx, "v") }},
		{"removing the last finalizer of a deleted Journal", func(f *Files) {
			create(f)
			if err := f.Delete(ctx, "v"); err != nil {
				t.Fatal(err)
			}
		}, func(f *Files) error {
			j := get(f)
			j.Finalizers = nil
			return f.Update(ctx, j)
		}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			fsys := faultfs.NewFS()
			f, err := openFiles(fsys, journalKind, "/journals", nil)
			if err != nil {
				t.Fatal(err)
			}
			if c.prepare != nil {
				c.prepare(f)
			}
			rng := rand.New(rand.NewPCG(uint64(len(c.name)), 3))
			before := stored(t, fsys, f)
			var cuts []*faultfs.FS
			fsys.After = func() { cuts = append(cuts, fsys.PowerCut(faultfs.TearRandomly(rng))) }
			if err := c.change(f); err != nil {
				t.Fatal(err)
			}
			fsys.After = nil
			after := stored(t, fsys, f)
			if after == before || len(cuts) == 0 {
				t.Fatalf("the change changed nothing (%d steps)", len(cuts))
			}
			for i, cut := range cuts {
				if got := stored(t, cut, f); got != before && got != after {
					t.Fatalf("power cut after step %d: the file holds\n%s\nwant\n%s\nor\n%s", i+1, got, before, after)
				}
			}
			if got := stored(t, fsys.PowerCut(nil), f); got != after {
				t.Fatalf("power cut after the change returned: the file holds\n%s\nwant\n%s", got, after)
			}
		})
	}
}

// stored returns the Journal's file in fsys as f would read it, and checks
// that the catalog there lists what it holds.
func stored(t *testing.T, fsys vfs.FS, f *Files) string {
	t.Helper()
	b, err := vfs.ReadFile(fsys, f.path("v"))
	if errors.Is(err, fs.ErrNotExist) {
		b, err = []byte("(none)"), nil
	}
	if err != nil {
		t.Fatal(err)
	}
	g, err := openFiles(fsys, journalKind, f.dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if js, err := g.List(context.Background()); err != nil || len(js) > 1 {
		t.Fatalf("list: %d Journals, %v", len(js), err)
	}
	return string(b)
}
