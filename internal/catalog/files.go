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

// Files keeps Journals as JSON files, one per Journal (NAME.json), each
// replaced atomically (temporary file, fsync, rename, fsync of the
// directory). It checks specs as the API server's schema would.
type Files struct {
	fs      vfs.FS
	dir     string
	changed func(name string) // told of every change but of a status alone

	mu sync.Mutex
}

// OpenFiles keeps Journals in dir, creating it if needed. changed, if not
// nil, is called with a Journal's name after every change but of its status
// alone.
func OpenFiles(dir string, changed func(name string)) (*Files, error) {
	return openFiles(vfs.OS, dir, changed)
}

func openFiles(fsys vfs.FS, dir string, changed func(name string)) (*Files, error) {
	if err := fsys.MkdirAll(dir); err != nil {
		return nil, err
	}
	if changed == nil {
		changed = func(string) {}
	}
	return &Files{fs: fsys, dir: dir, changed: changed}, nil
}

func metaName(name string) metav1.ObjectMeta { return metav1.ObjectMeta{Name: name} }

func (f *Files) path(name string) string { return filepath.Join(f.dir, name+".json") }

func (f *Files) read(name string) (*v1.Journal, error) {
	if errs := validation.IsDNS1123Subdomain(name); len(errs) > 0 {
		return nil, apierrors.NewNotFound(journals, name)
	}
	b, err := vfs.ReadFile(f.fs, f.path(name))
	if errors.Is(err, os.ErrNotExist) {
		return nil, apierrors.NewNotFound(journals, name)
	}
	if err != nil {
		return nil, err
	}
	var j v1.Journal
	if err := json.Unmarshal(b, &j); err != nil {
		return nil, fmt.Errorf("catalog: %s: %w", f.path(name), err)
	}
	return &j, nil
}

func (f *Files) write(j *v1.Journal) error {
	rv, _ := strconv.ParseUint(j.ResourceVersion, 10, 64)
	j.ResourceVersion = strconv.FormatUint(rv+1, 10)
	j.TypeMeta = metav1.TypeMeta{APIVersion: v1.GroupVersion.String(), Kind: "Journal"}
	b, err := json.MarshalIndent(j, "", "  ")
	if err != nil {
		return err
	}
	return vfs.WriteFileAtomic(f.fs, f.path(j.Name), b)
}

// remove removes the Journal's file durably: a deleted Journal does not
// come back after a power cut.
func (f *Files) remove(name string) error {
	if err := f.fs.Remove(f.path(name)); err != nil {
		return err
	}
	return f.fs.SyncDir(f.dir)
}

func (f *Files) Get(_ context.Context, name string) (*v1.Journal, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.read(name)
}

func (f *Files) List(_ context.Context) ([]v1.Journal, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	ents, err := f.fs.List(f.dir)
	if err != nil {
		return nil, err
	}
	var out []v1.Journal
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

func invalid(name string, err error) error {
	return apierrors.NewBadRequest(fmt.Sprintf("Journal.jvol.io %q is invalid: %v", name, err))
}

func (f *Files) Create(_ context.Context, j *v1.Journal) error {
	if errs := validation.IsDNS1123Subdomain(j.Name); len(errs) > 0 {
		return invalid(j.Name, errors.New(strings.Join(errs, "; ")))
	}
	if err := j.Spec.Validate(); err != nil {
		return invalid(j.Name, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if _, err := f.read(j.Name); err == nil {
		return apierrors.NewAlreadyExists(journals, j.Name)
	} else if !apierrors.IsNotFound(err) {
		return err
	}
	j.UID = types.UID(uuid.NewUUID())
	j.Generation = 1
	j.ResourceVersion = ""
	j.CreationTimestamp = metav1.Now()
	j.DeletionTimestamp = nil
	if j.Spec.Duplex == "" {
		j.Spec.Duplex = v1.Half
	}
	if err := f.write(j); err != nil {
		return err
	}
	f.changed(j.Name)
	return nil
}

// current reads the stored Journal that j updates, checking its version.
func (f *Files) current(j *v1.Journal) (*v1.Journal, error) {
	old, err := f.read(j.Name)
	if err != nil {
		return nil, err
	}
	if j.ResourceVersion != old.ResourceVersion {
		return nil, apierrors.NewConflict(journals, j.Name, errors.New("the object has been modified; please apply your changes to the latest version and try again"))
	}
	return old, nil
}

func (f *Files) Update(_ context.Context, j *v1.Journal) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	old, err := f.current(j)
	if err != nil {
		return err
	}
	if err := j.Spec.ValidateUpdate(&old.Spec); err != nil {
		return invalid(j.Name, err)
	}
	next := old.DeepCopy()
	next.Labels, next.Annotations, next.Finalizers = j.Labels, j.Annotations, j.Finalizers
	if old.DeletionTimestamp != nil && len(next.Finalizers) == 0 {
		if err := f.remove(j.Name); err != nil {
			return err
		}
		f.changed(j.Name)
		return nil
	}
	if !equality.Semantic.DeepEqual(old.Spec, j.Spec) {
		next.Spec = j.Spec
		next.Generation++
	}
	if err := f.write(next); err != nil {
		return err
	}
	*j = *next
	f.changed(j.Name)
	return nil
}

func (f *Files) UpdateStatus(_ context.Context, j *v1.Journal) error {
	return f.setStatus(j, f.current)
}

func (f *Files) ApplyStatus(_ context.Context, j *v1.Journal) error {
	return f.setStatus(j, func(j *v1.Journal) (*v1.Journal, error) { return f.read(j.Name) })
}

// setStatus stores j's status on the Journal get returns.
func (f *Files) setStatus(j *v1.Journal, get func(*v1.Journal) (*v1.Journal, error)) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	old, err := get(j)
	if err != nil {
		return err
	}
	next := old.DeepCopy()
	next.Status = j.Status
	if err := f.write(next); err != nil {
		return err
	}
	*j = *next
	return nil // a status change is not a change to act on
}

func (f *Files) Delete(_ context.Context, name string) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	j, err := f.read(name)
	if err != nil {
		return err
	}
	if len(j.Finalizers) == 0 {
		if err := f.remove(name); err != nil {
			return err
		}
	} else if j.DeletionTimestamp == nil {
		now := metav1.Now()
		j.DeletionTimestamp = &now
		if err := f.write(j); err != nil {
			return err
		}
	}
	f.changed(name)
	return nil
}
