package repository

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"sort"
	"unicode/utf8"
)

// NodeType is the kind of a directory entry.
type NodeType string

// Node types.
const (
	NodeFile    NodeType = "file"
	NodeDir     NodeType = "dir"
	NodeSymlink NodeType = "symlink"
	NodeDev     NodeType = "dev"     // block device
	NodeCharDev NodeType = "chardev" // character device
	NodeFifo    NodeType = "fifo"
	NodeSocket  NodeType = "socket"
)

// Node is one directory entry with everything restore needs to bring it
// back as it was.
type Node struct {
	Name  Name     `json:"name"`
	Type  NodeType `json:"type"`
	Mode  uint32   `json:"mode"` // permission and special bits (07777)
	UID   uint32   `json:"uid"`
	GID   uint32   `json:"gid"`
	User  string   `json:"user,omitempty"`
	Group string   `json:"group,omitempty"`
	Size  int64    `json:"size,omitempty"`
	MTime int64    `json:"mtime_ns"`
	// CTime only detects change; it cannot be restored. Access time is
	// not kept at all: reading a directory to back it up changes it, and
	// every tree would differ from its parent's.
	CTime   int64   `json:"ctime_ns"`
	Inode   uint64  `json:"inode,omitempty"`
	Device  uint64  `json:"device_id,omitempty"` // st_dev, for hard links
	Links   uint64  `json:"links,omitempty"`
	Rdev    uint64  `json:"rdev,omitempty"`
	Target  Name    `json:"target,omitzero"` // symlink
	Xattrs  []Xattr `json:"xattrs,omitempty"`
	Content []ID    `json:"content,omitempty"` // file: chunk ids
	// ContentLists replaces Content for files of more than 1024 chunks:
	// list blobs of up to 8192 chunk ids each, so that no tree, and no
	// process reading one, holds a large file's every id at once.
	ContentLists []ID `json:"content_lists,omitempty"`
	// BlockSize is set when the file was cut into fixed blocks; then every
	// chunk but the last is that long, and ZeroChunk is a block of zeros.
	BlockSize int `json:"block_size,omitempty"`
	Subtree   *ID `json:"subtree,omitempty"` // dir
}

// Content list sizes: files with more than contentInline chunks keep their
// ids in list blobs of at most contentListLen ids (256 KiB).
const (
	contentInline  = 1024
	contentListLen = 8192
)

// HasContent reports whether the node's content was stored: a file that
// could not be read has none.
func (n *Node) HasContent() bool { return n.Content != nil || n.ContentLists != nil }

// SetContent records a file's chunk ids in n, inline or, for a large file,
// in list blobs. It returns the bytes the list blobs added.
func (r *Repository) SetContent(ctx context.Context, n *Node, ids []ID) (int, error) {
	n.Content, n.ContentLists = ids, nil
	if ids == nil {
		n.Content = []ID{}
	}
	if len(ids) <= contentInline {
		return 0, nil
	}
	var added int
	raw := make([]byte, 0, contentListLen*len(ID{}))
	for part := range slices.Chunk(ids, contentListLen) {
		raw = raw[:0]
		for _, id := range part {
			raw = append(raw, id[:]...)
		}
		list, a, err := r.SaveBlob(ctx, ListBlob, raw)
		if err != nil {
			return added, err
		}
		added += a
		n.ContentLists = append(n.ContentLists, list)
	}
	n.Content = nil
	return added, nil
}

// ContentParts calls fn with the node's chunk ids in order, a list blob at
// a time (or all at once when they are inline).
func (r *Repository) ContentParts(ctx context.Context, n *Node, fn func(part []ID) error) error {
	if n.ContentLists == nil {
		return fn(n.Content)
	}
	for _, list := range n.ContentLists {
		raw, err := r.LoadBlob(ctx, list)
		if err != nil {
			return fmt.Errorf("content list: %w", err)
		}
		if len(raw)%len(ID{}) != 0 || len(raw) == 0 {
			return fmt.Errorf("content list %s: %d bytes is not a list of ids", list.Short(), len(raw))
		}
		part := make([]ID, len(raw)/len(ID{}))
		for i := range part {
			copy(part[i][:], raw[i*len(ID{}):])
		}
		if err := fn(part); err != nil {
			return err
		}
	}
	return nil
}

// Xattr is an extended attribute (ACLs are xattrs too).
type Xattr struct {
	Name  Name   `json:"name"`
	Value []byte `json:"value"`
}

// Tree is a directory's entries, sorted by name.
type Tree struct {
	Nodes []Node `json:"nodes"`
}

// ZeroChunk is the content id of an all-zero block of a block-cut file (a
// hole, or zeros, which restore leaves as a hole): nothing is stored for
// it. Its length is the node's BlockSize, or what remains of the file.
var ZeroChunk = ID{}

// AllZero reports whether b holds only zero bytes: such a block is stored
// as ZeroChunk, and restore leaves such data as a hole.
func AllZero(b []byte) bool {
	for len(b) >= 8 {
		if b[0]|b[1]|b[2]|b[3]|b[4]|b[5]|b[6]|b[7] != 0 {
			return false
		}
		b = b[8:]
	}
	for _, c := range b {
		if c != 0 {
			return false
		}
	}
	return true
}

// Name is a file name, symlink target or xattr name: any bytes. It is JSON
// text when it is valid UTF-8, and {"b64": …} otherwise, so no byte is lost.
type Name string

// MarshalJSON writes valid UTF-8 as a string, anything else as base64.
func (n Name) MarshalJSON() ([]byte, error) {
	if utf8.ValidString(string(n)) {
		return json.Marshal(string(n))
	}
	return json.Marshal(struct {
		B64 string `json:"b64"`
	}{base64.StdEncoding.EncodeToString([]byte(n))})
}

// UnmarshalJSON reads either form.
func (n *Name) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err == nil {
		*n = Name(s)
		return nil
	}
	var raw struct {
		B64 string `json:"b64"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return err
	}
	v, err := base64.StdEncoding.DecodeString(raw.B64)
	if err != nil {
		return err
	}
	*n = Name(v)
	return nil
}

// IsZero lets omitzero drop empty names.
func (n Name) IsZero() bool { return n == "" }

// SaveTree stores t (sorting it) as a tree blob.
func (r *Repository) SaveTree(ctx context.Context, t *Tree) (ID, int, error) {
	sort.Slice(t.Nodes, func(i, j int) bool { return t.Nodes[i].Name < t.Nodes[j].Name })
	if t.Nodes == nil {
		t.Nodes = []Node{}
	}
	data, err := json.Marshal(t)
	if err != nil {
		return ID{}, 0, err
	}
	return r.SaveBlob(ctx, TreeBlob, data)
}

// LoadTree reads a tree blob.
func (r *Repository) LoadTree(ctx context.Context, id ID) (*Tree, error) {
	data, err := r.LoadBlob(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("tree %s: %w", id.Short(), err)
	}
	var t Tree
	if err := json.Unmarshal(data, &t); err != nil {
		return nil, fmt.Errorf("tree %s is damaged: %w", id.Short(), err)
	}
	return &t, nil
}

// Find returns the node named name, or nil.
func (t *Tree) Find(name string) *Node {
	i := sort.Search(len(t.Nodes), func(i int) bool { return string(t.Nodes[i].Name) >= name })
	if i < len(t.Nodes) && string(t.Nodes[i].Name) == name {
		return &t.Nodes[i]
	}
	return nil
}
