// Package heldconn is the database/sql connection a writer holds through a
// set (SQLite's BEGIN IMMEDIATE, MariaDB's BACKUP STAGE): the locks belong
// to it, so closing it releases them, and the kernel closes it if umbra
// dies. Every statement runs under a context that also ends when the
// connection is closed, so Abort never waits on a statement.
package heldconn

import (
	"context"
	"database/sql"
	"errors"
	"sync"
)

// Conn is one held connection and the pool it came from.
type Conn struct {
	DB   *sql.DB
	Conn *sql.Conn

	ctx    context.Context // ends when the connection is closed
	cancel context.CancelFunc
	once   sync.Once
	err    error
}

// New holds conn, taken from db (whose only connection it should be).
func New(db *sql.DB, conn *sql.Conn) *Conn {
	c := &Conn{DB: db, Conn: conn}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	return c
}

// Bind returns a context that ends with ctx or when the connection closes.
func (c *Conn) Bind(ctx context.Context) (context.Context, context.CancelFunc) {
	ctx, cancel := context.WithCancel(ctx)
	stop := context.AfterFunc(c.ctx, cancel)
	return ctx, func() {
		stop()
		cancel()
	}
}

// Close ends the connection, interrupting a statement still running (the
// cancel makes the driver close the socket under it, so Conn.Close returns
// at once), then the pool. It is safe to call more than once.
func (c *Conn) Close() error {
	c.once.Do(func() {
		c.cancel()
		err := c.Conn.Close()
		if errors.Is(err, sql.ErrConnDone) {
			err = nil
		}
		c.err = errors.Join(err, c.DB.Close())
	})
	return c.err
}
