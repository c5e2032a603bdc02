package repository

import (
	"crypto/rand"
	"errors"
	"fmt"
	"sync"

	"github.com/zeebo/blake3"
	"golang.org/x/crypto/chacha20poly1305"
)

// ErrAuth means stored data failed authentication: it was changed or
// damaged, or it was sealed with another key.
var ErrAuth = errors.New("data does not authenticate (damaged, or another key)")

// MasterKey is the repository's secret, made once at init and stored only
// wrapped by password-derived keys.
type MasterKey struct {
	// Encrypt seals every stored file with XChaCha20-Poly1305: a random
	// 24-byte nonce per seal is safe for any number of blobs.
	Encrypt []byte `json:"encrypt"`
	// MAC keys the BLAKE3 hash that gives a chunk its id, so that ids
	// reveal nothing about content to anyone without the key.
	MAC []byte `json:"mac"`
	// Chunker keys the content-defined chunker's gear table, against
	// guessing file contents from chunk sizes.
	Chunker []byte `json:"chunker"`

	// hashers reuses keyed BLAKE3 states: a new one is ~10 KiB, and a
	// backup of a database file hashes one per 16 KiB block.
	hashers sync.Pool
}

func newMasterKey() (*MasterKey, error) {
	k := &MasterKey{Encrypt: make([]byte, chacha20poly1305.KeySize), MAC: make([]byte, 32), Chunker: make([]byte, 32)}
	for _, b := range [][]byte{k.Encrypt, k.MAC, k.Chunker} {
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
	}
	return k, nil
}

func (k *MasterKey) valid() error {
	if len(k.Encrypt) != chacha20poly1305.KeySize || len(k.MAC) != 32 || len(k.Chunker) != 32 {
		return errors.New("master key has the wrong size")
	}
	return nil
}

// blobID is a chunk's id: BLAKE3 keyed with the MAC key.
func (k *MasterKey) blobID(data []byte) ID {
	h, ok := k.hashers.Get().(*blake3.Hasher)
	if ok {
		h.Reset() // back to the keyed initial state
	} else {
		h, _ = blake3.NewKeyed(k.MAC) // the key is 32 bytes: checked by valid
	}
	h.Write(data)
	var id ID
	h.Sum(id[:0])
	k.hashers.Put(h)
	return id
}

// Overhead is what sealing adds: nonce and tag.
const Overhead = chacha20poly1305.NonceSizeX + chacha20poly1305.Overhead

// seal encrypts plaintext and appends nonce‖ciphertext‖tag to dst.
func seal(key, dst, plaintext []byte) ([]byte, error) {
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	start := len(dst)
	dst = append(dst, make([]byte, aead.NonceSize())...)
	if _, err := rand.Read(dst[start:]); err != nil {
		return nil, err
	}
	return aead.Seal(dst, dst[start:], plaintext, nil), nil
}

// openInPlace authenticates and decrypts a sealed message over its own
// ciphertext, so the plaintext aliases sealed.
func openInPlace(key, sealed []byte) ([]byte, error) {
	if len(sealed) < Overhead {
		return nil, fmt.Errorf("sealed data of %d bytes is too short: %w", len(sealed), ErrAuth)
	}
	n := chacha20poly1305.NonceSizeX
	return open(key, sealed[n:n], sealed)
}

// open authenticates and decrypts a sealed message, appending to dst.
func open(key, dst, sealed []byte) ([]byte, error) {
	aead, err := chacha20poly1305.NewX(key)
	if err != nil {
		return nil, err
	}
	if len(sealed) < Overhead {
		return nil, fmt.Errorf("sealed data of %d bytes is too short: %w", len(sealed), ErrAuth)
	}
	n := aead.NonceSize()
	out, err := aead.Open(dst, sealed[:n], sealed[n:], nil)
	if err != nil {
		return nil, ErrAuth
	}
	return out, nil
}
