package mem_test

import (
	"testing"

	"github.com/umbra-backup/umbra/internal/backend"
	"github.com/umbra-backup/umbra/internal/backend/backendtest"
	"github.com/umbra-backup/umbra/internal/backend/mem"
)

func TestConformance(t *testing.T) {
	backendtest.Run(t, func(t *testing.T) backend.Backend { return mem.New() })
}
