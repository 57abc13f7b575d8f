package catalog

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"

	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/uuid"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/jvol-io/jvol/internal/vfs"
	v1 "github.com/jvol-io/jvol/pkg/apis/jvol/v1alpha1"
)

// FilesOf keeps objects of one kind as JSON files, one per object
// (NAME.json), each replaced atomically (temporary file, fsync, rename,
// fsync of the directory). It checks specs as the API server's schema
// would.
type FilesOf[T any, P Object[T]] struct {
	kind    kind[T, P]
	fs      vfs.FS
	dir     string
	changed func(name string) // told of every change but of a status alone

	mu sync.Mutex
}

// Files keeps Journals, SnapshotFiles JournalSnapshots.
type (
	Files         = FilesOf[v1.Journal, *v1.Journal]
	SnapshotFiles = FilesOf[v1.JournalSnapshot, *v1.JournalSnapshot]
)

// OpenFiles keeps Journals in dir, creating it if needed. changed, if not
// nil, is called with a Journal's name after every change but of its status
// alone.
func OpenFiles(dir string, changed func(name string)) (*Files, error) {
	return openFiles(vfs.OS, journalKind, dir, changed)
}

// OpenSnapshotFiles keeps JournalSnapshots in dir as OpenFiles does
// Journals.
func OpenSnapshotFiles(dir string, changed func(name string)) (*SnapshotFiles, error) {
	return openFiles(vfs.OS, snapshotKind, dir, changed)
}

func openFiles[T any, P Object[T]](fsys vfs.FS, k kind[T, P], dir string, changed func(name string)) (*FilesOf[T, P], error) {
	if err := fsys.MkdirAll(dir); err != nil {
		return nil, err
	}
	if changed == nil {
		changed = func(string) {}
	}
	return &FilesOf[T, P]{kind: k, fs: fsys, dir: dir, changed: changed}, nil
}

func (f *FilesOf[T, P]) path(name string) string { return filepath.Join(f.dir, name+".json") }

func (f *FilesOf[T, P]) read(name string) (P, error) {
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return nil, apierrors.NewNotFound(f.kind.resource, name)
	}
	b, err := vfs.ReadFile(f.fs, f.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, apierrors.NewNotFound(f.kind.resource, name)
	}
	if err != nil {
		return nil, err
	}
	o := P(new(T))
	if err := json.Unmarshal(b, o); err != nil {
		return nil, fmt.Errorf("catalog: %s: %w", f.path(name), err)
	}
	return o, nil
}

func (f *FilesOf[T, P]) write(o P) error {
	rv, _ := strconv.ParseUint(o.GetResourceVersion(), 10, 64)
	o.SetResourceVersion(strconv.FormatUint(rv+1, 10))
	o.GetObjectKind().SetGroupVersionKind(v1.GroupVersion.WithKind(f.kind.name))
	b, err := json.MarshalIndent(o, "", "  ")
	if err != nil {
		return err
	}
	return vfs.WriteFileAtomic(f.fs, f.path(o.GetName()), b)
}

// remove removes the Journal's file durably: a deleted Journal does not
// come back after a power cut.
func (f *FilesOf[T, P]) remove(name string) error {
	if err := f.fs.Remove(f.path(name)); err != nil {
		return err
	}
	return f.fs.SyncDir(f.dir)
}

func (f *FilesOf[T, P]) Get(_ context.Context, name string) (P, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.read(name)
}

func (f *FilesOf[T, P]) List(_ context.Context) ([]T, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ents, err := f.fs.List(f.dir)
	if err != nil {
		return nil, err
	}
	var out []T
	for _, e := range ents {
		name, ok := strings.CutSuffix(e, ".json")
		if !ok || strings.HasPrefix(name, ".") {
			continue
		}
		j, err := f.read(name)
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, *j)
	}
	return out, nil
}

func (f *FilesOf[T, P]) invalid(name string, err error) error {
	return apierrors.NewBadRequest(fmt.Sprintf("%s.jvol.io %q is invalid: %v", f.kind.name, name, err))
}

func (f *FilesOf[T, P]) Create(_ context.Context, o P) error {
	if errs := validation.IsDNS1123Subdomain(o.GetName()); len(errs) > 0 {
		return f.invalid(o.GetName(), errors.New(strings.Join(errs, "; ")))
	}
	if err := f.kind.validate(o); err != nil {
		return f.invalid(o.GetName(), err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.read(o.GetName()); err == nil {
		return apierrors.NewAlreadyExists(f.kind.resource, o.GetName())
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	o.SetUID(types.UID(uuid.NewUUID()))
	o.SetGeneration(1)
	o.SetResourceVersion("")
	o.SetCreationTimestamp(metav1.Now())
	o.SetDeletionTimestamp(nil)
	f.kind.defaults(o)
	if err := f.write(o); err != nil {
		return err
	}
	f.changed(o.GetName())
	return nil
}

// current reads the stored object that o updates, checking its version.
func (f *FilesOf[T, P]) current(o P) (P, error) {
	old, err := f.read(o.GetName())
	if err != nil {
		return nil, err
	}
	if o.GetResourceVersion() != old.GetResourceVersion() {
		return nil, apierrors.NewConflict(f.kind.resource, o.GetName(), errors.New("the object has been modified; please apply your changes to the latest version and try again"))
	}
	return old, nil
}

func (f *FilesOf[T, P]) Update(_ context.Context, o P) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	old, err := f.current(o)
	if err != nil {
		return err
	}
	if err := f.kind.validateUpdate(o, old); err != nil {
		return f.invalid(o.GetName(), err)
	}
	next := old.DeepCopyObject().(P)
	next.SetLabels(o.GetLabels())
	next.SetAnnotations(o.GetAnnotations())
	next.SetFinalizers(o.GetFinalizers())
	if old.GetDeletionTimestamp() != nil && len(next.GetFinalizers()) == 0 {
		if err := f.remove(o.GetName()); err != nil {
			return err
		}
		f.changed(o.GetName())
		return nil
	}
	if !equality.Semantic.DeepEqual(f.kind.spec(old), f.kind.spec(o)) {
		set(f.kind.spec, next, o)
		next.SetGeneration(next.GetGeneration() + 1)
	}
	if err := f.write(next); err != nil {
		return err
	}
	*o = *next
	f.changed(o.GetName())
	return nil
}

func (f *FilesOf[T, P]) UpdateStatus(_ context.Context, o P) error {
	return f.setStatus(o, f.current)
}

func (f *FilesOf[T, P]) ApplyStatus(_ context.Context, o P) error {
	return f.setStatus(o, func(o P) (P, error) { return f.read(o.GetName()) })
}

// setStatus stores o's status on the object get returns.
func (f *FilesOf[T, P]) setStatus(o P, get func(P) (P, error)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	old, err := get(o)
	if err != nil {
		return err
	}
	next := old.DeepCopyObject().(P)
	set(f.kind.status, next, o)
	if err := f.write(next); err != nil {
		return err
	}
	*o = *next
	return nil // a status change is not a change to act on
}

func (f *FilesOf[T, P]) Delete(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	o, err := f.read(name)
	if err != nil {
		return err
	}
	if len(o.GetFinalizers()) == 0 {
		if err := f.remove(name); err != nil {
			return err
		}
	} else if o.GetDeletionTimestamp() == nil {
		now := metav1.Now()
		o.SetDeletionTimestamp(&now)
		if err := f.write(o); err != nil {
			return err
		}
	}
	f.changed(name)
	return nil
}
