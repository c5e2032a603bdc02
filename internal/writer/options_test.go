package writer

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPassword(t *testing.T) {
	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte("from-file\nignored\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("UMBRA_TEST_PW", "from-env")
	tests := []struct {
		opts map[string]string
		want string
	}{
		{map[string]string{"password": "inline", "password_file": file}, "inline"},
		{map[string]string{"password_file": file}, "from-file"},
		{map[string]string{}, "from-env"},
	}
	for _, tt := range tests {
		got, err := Password(tt.opts, "UMBRA_TEST_PW")
		if err != nil || got != tt.want {
			t.Errorf("Password(%v) = %q, %v; want %q", tt.opts, got, err, tt.want)
		}
	}
	_, err := Password(map[string]string{"password_file": file + ".missing"}, "")
	if err == nil || !strings.Contains(err.Error(), "password_file") {
		t.Errorf("missing password_file: got %v, want an error naming it", err)
	}
}

func TestCheckOptions(t *testing.T) {
	if err := CheckOptions("redis", "redis:a", map[string]string{"addr": "x"}, []string{"socket", "addr"}); err != nil {
		t.Errorf("valid options refused: %v", err)
	}
	err := CheckOptions("redis", "redis:a", map[string]string{"adr": "x"}, []string{"socket", "addr"})
	if err == nil || !strings.Contains(err.Error(), `redis writer "redis:a": unknown option "adr"; valid options: addr, socket`) {
		t.Errorf("misspelt option: %v", err)
	}
}
