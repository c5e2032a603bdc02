package mount

import (
	"container/list"
	"context"
	"sync"

	"github.com/umbra-backup/umbra/internal/repository"
)

// cache keeps recently read blobs, up to a byte budget, and loads each
// blob once however many readers want it at the same time.
type cache struct {
	repo   *repository.Repository
	budget int64

	mu      sync.Mutex
	size    int64
	lru     *list.List // of *entry, most recent first
	entries map[repository.ID]*list.Element
	loading map[repository.ID]chan struct{}
}

type entry struct {
	id   repository.ID
	data []byte
}

func newCache(repo *repository.Repository, budget int64) *cache {
	return &cache{repo: repo, budget: budget, lru: list.New(),
		entries: map[repository.ID]*list.Element{}, loading: map[repository.ID]chan struct{}{}}
}

// get returns the blob, from the cache or loaded now.
func (c *cache) get(ctx context.Context, id repository.ID) ([]byte, error) {
	for {
		c.mu.Lock()
		if el, ok := c.entries[id]; ok {
			c.lru.MoveToFront(el)
			data := el.Value.(*entry).data
			c.mu.Unlock()
			return data, nil
		}
		if wait, ok := c.loading[id]; ok {
			c.mu.Unlock()
			select {
			case <-wait:
				continue // loaded (or failed: then this reader tries)
			case <-ctx.Done():
				return nil, ctx.Err()
			}
		}
		done := make(chan struct{})
		c.loading[id] = done
		c.mu.Unlock()
		data, err := c.repo.LoadBlob(ctx, id)
		c.mu.Lock()
		delete(c.loading, id)
		if err == nil {
			c.put(id, data)
		}
		c.mu.Unlock()
		close(done)
		return data, err
	}
}

// prefetch loads the blobs of ids not cached nor loading, together (blobs
// of one pack in one read), in the background.
func (c *cache) prefetch(ids []repository.ID) {
	c.mu.Lock()
	var want []repository.ID
	seen := make(map[repository.ID]bool, len(ids))
	for _, id := range ids {
		_, cached := c.entries[id]
		_, loading := c.loading[id]
		if !cached && !loading && !seen[id] {
			seen[id] = true
			want = append(want, id)
		}
	}
	if len(want) == 0 {
		c.mu.Unlock()
		return
	}
	waits := make([]chan struct{}, len(want))
	for i, id := range want {
		waits[i] = make(chan struct{})
		c.loading[id] = waits[i]
	}
	c.mu.Unlock()
	go func() {
		// Each blob is handed over as it comes, not when the batch ends:
		// the reader waits for its chunk only.
		_ = c.repo.LoadBlobs(context.Background(), want, func(id repository.ID, data []byte) error {
			kept := append([]byte(nil), data...) // data is reused after fn returns
			c.mu.Lock()
			c.put(id, kept)
			if ch, ok := c.loading[id]; ok {
				delete(c.loading, id)
				close(ch)
			}
			c.mu.Unlock()
			return nil
		})
		c.mu.Lock()
		for i, id := range want {
			if c.loading[id] == waits[i] { // not delivered: the reader loads it
				delete(c.loading, id)
				close(waits[i])
			}
		}
		c.mu.Unlock()
	}()
}

// put adds a blob and evicts the least recent beyond the budget; c.mu is
// held.
func (c *cache) put(id repository.ID, data []byte) {
	if _, ok := c.entries[id]; ok {
		return
	}
	c.entries[id] = c.lru.PushFront(&entry{id: id, data: data})
	c.size += int64(len(data))
	for c.size > c.budget && c.lru.Len() > 1 {
		el := c.lru.Back()
		e := el.Value.(*entry)
		c.lru.Remove(el)
		delete(c.entries, e.id)
		c.size -= int64(len(e.data))
	}
}
