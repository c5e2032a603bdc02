package repository

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/umbra-backup/umbra/internal/backend"
)

// ErrWrongPassword means no key file of the repository opens with the
// password given.
var ErrWrongPassword = errors.New("wrong password: no key of this repository opens with it")

// KDFParams are argon2id's costs. The defaults take about a third of a
// second and 32 MiB here: slow for a guesser (above OWASP's argon2id
// minimums), quick and light for a backup, whose peak memory it would
// otherwise set.
type KDFParams struct {
	Time    uint32 `json:"time"`
	Memory  uint32 `json:"memory_kib"`
	Threads uint8  `json:"threads"`
}

// DefaultKDF is used for new keys.
var DefaultKDF = KDFParams{Time: 4, Memory: 32 * 1024, Threads: 2}

// keyFile is a stored key: the master key, sealed with a key derived from
// a password.
type keyFile struct {
	Created time.Time `json:"created"`
	Host    string    `json:"host,omitempty"`
	User    string    `json:"user,omitempty"`
	KDF     string    `json:"kdf"`
	Params  KDFParams `json:"params"`
	Salt    []byte    `json:"salt"`
	Wrapped []byte    `json:"wrapped"`
}

// KeyInfo describes a key for umbra key list.
type KeyInfo struct {
	ID      string    `json:"id"`
	Created time.Time `json:"created"`
	Host    string    `json:"host,omitempty"`
	User    string    `json:"user,omitempty"`
	Current bool      `json:"current"`
}

func deriveKEK(password string, salt []byte, p KDFParams) []byte {
	return argon2.IDKey([]byte(password), salt, p.Time, p.Memory, p.Threads, 32)
}

// saveKey wraps mk with password in a new key file and returns its name.
func saveKey(ctx context.Context, be backend.Backend, mk *MasterKey, password string, params KDFParams) (string, error) {
	if password == "" {
		return "", errors.New("empty password; set UMBRA_PASSWORD or UMBRA_PASSWORD_FILE")
	}
	kf := keyFile{Created: time.Now().UTC(), KDF: "argon2id", Params: params, Salt: make([]byte, 16)}
	kf.Host, _ = os.Hostname()
	if u, err := user.Current(); err == nil {
		kf.User = u.Username
	}
	if _, err := rand.Read(kf.Salt); err != nil {
		return "", err
	}
	plain, err := json.Marshal(mk)
	if err != nil {
		return "", err
	}
	if kf.Wrapped, err = seal(deriveKEK(password, kf.Salt, params), nil, plain); err != nil {
		return "", err
	}
	data, err := json.MarshalIndent(kf, "", "  ")
	if err != nil {
		return "", err
	}
	name := hashID(data).String()
	if err := be.Save(ctx, backend.Handle{Type: backend.TypeKey, Name: name}, int64(len(data)), bytes.NewReader(data)); err != nil {
		return "", fmt.Errorf("save key: %w", err)
	}
	return name, nil
}

// openKey tries the password on every key file.
func openKey(ctx context.Context, be backend.Backend, password string) (*MasterKey, string, error) {
	var names []string
	err := be.List(ctx, backend.TypeKey, func(fi backend.FileInfo) error {
		names = append(names, fi.Name)
		return nil
	})
	if err != nil {
		return nil, "", fmt.Errorf("list keys: %w", err)
	}
	if len(names) == 0 {
		return nil, "", fmt.Errorf("%s has no keys: it is not an umbra repository, or it is damaged", be.Location())
	}
	var unreadable []error
	for _, name := range names {
		kf, err := loadKeyFile(ctx, be, name)
		if errors.Is(err, fs.ErrPermission) {
			// Another user's key (root's, beside the one made for
			// wal-push): try the others.
			unreadable = append(unreadable, err)
			continue
		}
		if err != nil {
			return nil, "", err
		}
		plain, err := open(deriveKEK(password, kf.Salt, kf.Params), nil, kf.Wrapped)
		if errors.Is(err, ErrAuth) {
			continue
		}
		if err != nil {
			return nil, "", err
		}
		var mk MasterKey
		if err := json.Unmarshal(plain, &mk); err != nil {
			return nil, "", fmt.Errorf("key %s: %w", shortName(name), err)
		}
		if err := mk.valid(); err != nil {
			return nil, "", fmt.Errorf("key %s: %w", shortName(name), err)
		}
		return &mk, name, nil
	}
	if len(unreadable) > 0 {
		return nil, "", fmt.Errorf("%w (and %d key files this user cannot read: %w)", ErrWrongPassword, len(unreadable), errors.Join(unreadable...))
	}
	return nil, "", ErrWrongPassword
}

func loadKeyFile(ctx context.Context, be backend.Backend, name string) (*keyFile, error) {
	rd, err := be.Load(ctx, backend.Handle{Type: backend.TypeKey, Name: name}, 0, 0)
	if err != nil {
		return nil, fmt.Errorf("load key %s: %w", name, err)
	}
	defer rd.Close()
	data, err := io.ReadAll(io.LimitReader(rd, 1<<20))
	if err != nil {
		return nil, fmt.Errorf("load key %s: %w", name, err)
	}
	var kf keyFile
	if err := json.Unmarshal(data, &kf); err != nil {
		return nil, fmt.Errorf("key %s is damaged: %w", name, err)
	}
	if kf.KDF != "argon2id" {
		return nil, fmt.Errorf("key %s uses KDF %q, which this umbra does not know", name, kf.KDF)
	}
	if err := kf.Params.valid(); err != nil {
		return nil, fmt.Errorf("key %s is damaged: %w", name, err)
	}
	return &kf, nil
}

// Bounds on a key file's KDF costs: argon2 panics on zero threads, and a
// damaged file must not make umbra spend hours or all memory on a key.
const (
	maxKDFTime   = 100
	maxKDFMemory = 4 << 20 // KiB: 4 GiB
)

func (p KDFParams) valid() error {
	if p.Time < 1 || p.Time > maxKDFTime || p.Threads < 1 || p.Memory < 8*uint32(p.Threads) || p.Memory > maxKDFMemory {
		return fmt.Errorf("argon2id costs time %d, memory %d KiB, threads %d are outside 1..%d, 8×threads..%d KiB, 1..255",
			p.Time, p.Memory, p.Threads, maxKDFTime, maxKDFMemory)
	}
	return nil
}

// AddKey stores a new key for password, opening the same master key.
func (r *Repository) AddKey(ctx context.Context, password string) (string, error) {
	return saveKey(ctx, r.be, r.key, password, r.kdf)
}

// Keys lists the repository's keys.
func (r *Repository) Keys(ctx context.Context) ([]KeyInfo, error) {
	var infos []KeyInfo
	err := r.be.List(ctx, backend.TypeKey, func(fi backend.FileInfo) error {
		kf, err := loadKeyFile(ctx, r.be, fi.Name)
		if err != nil {
			return err
		}
		infos = append(infos, KeyInfo{ID: fi.Name, Created: kf.Created, Host: kf.Host, User: kf.User, Current: fi.Name == r.keyName})
		return nil
	})
	return infos, err
}

// RemoveKey deletes a key by id or unique prefix. The key in use cannot be
// removed: that could lock everyone out.
func (r *Repository) RemoveKey(ctx context.Context, prefix string) error {
	keys, err := r.Keys(ctx)
	if err != nil {
		return err
	}
	var match []KeyInfo
	for _, k := range keys {
		if len(prefix) >= 4 && k.ID[:min(len(prefix), len(k.ID))] == prefix {
			match = append(match, k)
		}
	}
	switch {
	case len(match) == 0:
		return fmt.Errorf("no key %q (give at least 4 digits; umbra key list shows them)", prefix)
	case len(match) > 1:
		return fmt.Errorf("key %q is ambiguous; give more digits", prefix)
	case match[0].Current:
		return fmt.Errorf("key %s is the one in use; open the repository with another password to remove it", shortName(match[0].ID))
	}
	return r.be.Remove(ctx, backend.Handle{Type: backend.TypeKey, Name: match[0].ID})
}

// shortName is a file name's first 8 characters, for messages.
func shortName(name string) string { return name[:min(8, len(name))] }
