package daemon

import (
	"embed"
	"io/fs"
	"net/http"
)

// uiFiles is the web UI: static files in the binary, nothing from a CDN.
//
//go:embed ui
var uiFiles embed.FS

// uiPaths are served without a token: the page asks for it, and every API
// call it makes carries it.
var uiPaths = map[string]bool{"/": true, "/index.html": true, "/app.js": true, "/style.css": true}

// uiHandler serves the UI's files with a policy that lets them load
// nothing from elsewhere and be framed by no one.
func uiHandler() http.Handler {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err)
	}
	files := http.FileServerFS(sub)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := w.Header()
		h.Set("Content-Security-Policy", "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'")
		h.Set("X-Content-Type-Options", "nosniff")
		h.Set("Referrer-Policy", "no-referrer")
		files.ServeHTTP(w, r)
	})
}
